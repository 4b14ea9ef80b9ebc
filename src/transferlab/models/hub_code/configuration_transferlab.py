"""Config of a transferlab export: the base model's config plus the pooling head on top.

Written by transferlab (https://github.com/transferlab); depends only on transformers.
"""

from transformers import AutoConfig, PretrainedConfig


class TransferlabConfig(PretrainedConfig):
    """``backbone_config``: the base model's config as a dict (with its ``model_type``);
    ``head``: the head's registered name; ``head_options``: its options as trained;
    ``hidden_size``/``num_hidden_layers``: the backbone's; ``num_outputs``: logits per example."""

    model_type = "transferlab"

    def __init__(self, backbone_config=None, head="mean", head_options=None, head_dropout=0.1,
                 num_outputs=2, hidden_size=768, num_hidden_layers=12, input_adapter=None, **kwargs):
        self.backbone_config = backbone_config or {}
        self.head = head
        self.head_options = dict(head_options or {})
        self.head_dropout = head_dropout
        self.num_outputs = num_outputs
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.input_adapter = input_adapter
        super().__init__(**kwargs)

    def base_config(self):
        """The base model's config object."""
        data = dict(self.backbone_config)
        return AutoConfig.for_model(data.pop("model_type"), **data)
