"""A transferlab export as a sequence classifier: base model -> all hidden states -> pooling head.

Written by transferlab; depends only on torch and transformers. The heads mirror
transferlab.models.heads (same computations, same parameter names); every pooling over
time ignores padded positions.
"""

import inspect

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_transferlab import TransferlabConfig


def _mask(mask, like):
    return mask.to(device=like.device).bool().unsqueeze(-1)


def masked_mean(x, mask):
    m = _mask(mask, x)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def masked_max(x, mask):
    return x.masked_fill(~_mask(mask, x), torch.finfo(x.dtype).min).amax(1)


def last_token(x, mask):
    pos = torch.arange(x.shape[1], device=x.device)
    idx = (mask.to(x.device).bool() * (pos + 1)).argmax(1)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def last_tokens(x, mask, k):
    ends = mask.to(x.device).long().sum(1)
    idx = (ends[:, None] - k + torch.arange(k, device=x.device)[None, :]).clamp(min=0)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class PoolingHead(nn.Module):
    """One of transferlab's heads, chosen by name: pool the hidden states, dropout, linear ``out``."""

    def __init__(self, name, hidden, layers, num_outputs, dropout, options):
        super().__init__()
        self.name, self.opts, self.num_outputs = name, dict(options), num_outputs
        self.dropout = nn.Dropout(dropout)
        opt = self.opts.get
        features, outputs = hidden, num_outputs
        if name in ("cls", "pooler"):
            self.dense = nn.Linear(hidden, hidden)
        elif name == "last_k_cls":
            self.k = opt("k") if opt("k") is not None else min(4, layers + 1)
            features = self.k * hidden
        elif name == "mean_max":
            features = 2 * hidden
        elif name == "concat_pool":
            features = 3 * hidden
        elif name == "attention":
            width = opt("hidden") or hidden
            self.proj = nn.Linear(hidden, width)
            self.score = nn.Linear(width, 1, bias=False)
        elif name == "layer_mix":
            self.weights = nn.Parameter(torch.zeros(layers + 1))
            self.gamma = nn.Parameter(torch.ones(1))
        elif name == "conv1d":
            channels = opt("channels") or hidden
            self.conv = nn.Conv1d(hidden, channels, opt("kernel_size") or 3, padding="same")
            features = channels
        elif name in ("lstm", "bilstm"):
            bi = name == "bilstm"
            width = opt("hidden") or (hidden // 2 if bi else hidden)
            self.lstm = nn.LSTM(hidden, width, batch_first=True, bidirectional=bi)
            features = width * (2 if bi else 1)
        elif name == "last":
            self.k = opt("tokens") or 1
            self.p = opt("outputs_per_token") or 1
            self.per_token = opt("outputs_per_token") is not None
            outputs = self.p * num_outputs
        elif name not in ("cls_linear", "mean", "max"):
            raise ValueError(f"head {name!r} is not known to this modeling file")
        self.out = nn.Linear(features, outputs)

    def pool(self, hs, mask):
        h, name = hs[-1], self.name
        if name in ("cls", "pooler"):
            return torch.tanh(self.dense(self.dropout(h[:, 0])))
        if name == "cls_linear":
            return h[:, 0]
        if name == "last_k_cls":
            return torch.cat([x[:, 0] for x in hs[-self.k:]], dim=-1)
        if name == "mean":
            return masked_mean(h, mask)
        if name == "max":
            return masked_max(h, mask)
        if name == "mean_max":
            return torch.cat([masked_mean(h, mask), masked_max(h, mask)], dim=-1)
        if name == "concat_pool":
            return torch.cat([last_token(h, mask), masked_max(h, mask), masked_mean(h, mask)], dim=-1)
        if name == "attention":
            scores = self.score(torch.tanh(self.proj(h))).squeeze(-1)
            scores = scores.masked_fill(~_mask(mask, h).squeeze(-1), torch.finfo(scores.dtype).min)
            return (scores.softmax(1).unsqueeze(-1) * h).sum(1)
        if name == "layer_mix":
            w = self.weights.softmax(0)
            mixed = self.gamma * sum(wj * x for wj, x in zip(w, hs))
            return mixed[:, 0] if self.opts.get("pool", "mean") == "cls" else masked_mean(mixed, mask)
        if name == "conv1d":
            y = torch.relu(self.conv((h * _mask(mask, h)).transpose(1, 2))).transpose(1, 2)
            return masked_max(y, mask)
        if name in ("lstm", "bilstm"):
            m = mask.to(h.device).bool()
            order = torch.argsort((~m).int(), dim=1, stable=True)  # real tokens first, in order
            h = h.gather(1, order.unsqueeze(-1).expand_as(h))
            lengths = m.sum(1).clamp(min=1).cpu()
            _, (h_n, _) = self.lstm(pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False))
            return torch.cat(list(h_n), dim=-1)
        if name == "last":
            return last_tokens(h, mask, self.k) if self.per_token else last_token(h, mask)
        raise ValueError(name)

    def forward(self, hs, mask):
        logits = self.out(self.dropout(self.pool(hs, mask)))
        if self.name == "last" and self.per_token:
            return logits.reshape(logits.shape[0], self.k * self.p, self.num_outputs)
        return logits


class TransferlabForSequenceClassification(PreTrainedModel):
    config_class = TransferlabConfig
    base_model_prefix = "backbone"

    def __init__(self, config):
        super().__init__(config)
        if config.input_adapter:
            raise ValueError(
                f"this export takes {config.input_adapter.get('kind')} inputs through an input adapter, not text; "
                "load it with transferlab.models.load_exported")
        self.backbone = AutoModel.from_config(config.base_config())
        self.head = PoolingHead(config.head, config.hidden_size, config.num_hidden_layers, config.num_outputs,
                                config.head_dropout, config.head_options)
        self._args = set(inspect.signature(self.backbone.forward).parameters)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.data.zero_()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                **kwargs):
        ref = input_ids if input_ids is not None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        kw = {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.backbone.config, "type_vocab_size", 0) >= 2:
            kw["token_type_ids"] = token_type_ids  # only for models with a segment table (not GPT-2)
        if "use_cache" in self._args:
            kw["use_cache"] = False
        out = self.backbone(**kw, output_hidden_states=True, return_dict=True)
        logits = self.head(tuple(out.hidden_states), attention_mask)
        loss = None
        if labels is not None:
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=None, attentions=None)
