"""Make source models: MLM continued pretraining of text models, masked modelling of other inputs.

    transferlab pretrain spec.yaml [--set key=value ...]

    from transferlab.pretrain import load_pretrain_spec, pretrain
    summary = pretrain(load_pretrain_spec("examples/pretrain_glue_text.yaml"))

``objective: mlm`` runs :func:`transferlab.pretrain.mlm.train_mlm`; ``objective: masked_inputs`` runs
:func:`transferlab.pretrain.masked_inputs.train_masked_inputs`. Both write a Hugging Face folder
(``out``) that loads as a backbone and as a transplant source, with ``pretrain.json`` beside it.
"""

from __future__ import annotations

from transferlab.pretrain.spec import PretrainSpec, load_pretrain_spec

__all__ = ["PretrainSpec", "load_pretrain_spec", "pretrain"]


def pretrain(spec: PretrainSpec, progress: bool = True, hooks: list | tuple = ()) -> dict:
    """Run the spec's objective; returns its summary (also in ``<out>/pretrain.json``). ``hooks``: training
    hooks (recipes/hooks.py) the Engine runs with the spec's own."""
    if spec.objective == "mlm":
        from transferlab.pretrain.mlm import train_mlm

        return train_mlm(spec, progress=progress, hooks=hooks)
    from transferlab.pretrain.masked_inputs import train_masked_inputs

    return train_masked_inputs(spec, progress=progress, hooks=hooks)
