"""AntiBERTy (Ruffolo et al. 2021): a BERT pretrained by masked language modelling on 558M antibody
sequences, from the PyPI package ``antiberty==0.1.3`` (MIT; ``pip install 'transferlab[protein]'``).

    model: {name: antiberty}                     # the packaged weights, amino-acid tokenizer
    model: {name: antiberty-text, init: random}  # a text BERT of its shape (8 x 512, 8 heads, FFN 2048)
                                                 # with MiniLM's WordPiece vocabulary, fresh weights

The package ships a state dict (``trained_models/AntiBERTy_md_smooth/pytorch_model.bin``: ``bert.*``
and ``cls.*`` keys, i.e. the encoder, BERT's MLM head and species/chain/graft heads), its
``config.json`` and ``vocab.txt`` (one folder up: 5 specials and the 20 amino acids). We never import
the package's code: its files are read with ``torch.load(weights_only=True)`` and converted once into
a ``save_pretrained`` folder of ``BertForMaskedLM`` (safetensors; the species/chain/graft heads are
dropped) under the user's cache (``$TRANSFERLAB_CACHE``, else ``$XDG_CACHE_HOME/transferlab``, else
``~/.cache/transferlab``), never into site-packages. Everything else (load_backbone, ``transplant:
{source: antiberty}``, ``transferlab pretrain``) reads that folder like any BERT; its FamilyMap is BERT's.

The package tokenizes space-separated residues with a ``BertTokenizer``; our tokenizer splits every
character too, so ``"EVQLV"`` and ``"E V Q L V"`` give the same ids. Text that is not an amino-acid
sequence (English) becomes mostly ``[UNK]``: the first call that meets unknown tokens logs their rate
as a warning, once per tokenizer (that is, once per run).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers as tf

from transferlab.errors import ModelError, SpecError

log = logging.getLogger(__name__)

PACKAGE, VERSION, EXTRA = "antiberty", "0.1.3", "transferlab[protein]"
CHECKPOINT = "trained_models/AntiBERTy_md_smooth"
ALIASES = ("antiberty", "antiberty-text")
# The shape of AntiBERTy's encoder (its config.json), for the text BERT of the same shape.
SHAPE = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 2048,
         "hidden_act": "gelu", "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "type_vocab_size": 2}
_FORMAT = 1  # bump when the converted folder's layout changes: old caches are rebuilt


def package_dir() -> Path:
    """The installed package's folder (found, not imported); a ModelError naming the extra if absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.name: antiberty needs the package antiberty=={VERSION}: "
                         f"pip install '{EXTRA}'")
    return Path(list(spec.submodule_search_locations)[0])


def packaged_files() -> dict[str, Path]:
    root = package_dir()
    files = {"weights": root / CHECKPOINT / "pytorch_model.bin", "config": root / CHECKPOINT / "config.json",
             "vocab": root / "trained_models" / "vocab.txt"}
    for what, path in files.items():
        if not path.is_file():
            raise ModelError(f"model.name: antiberty: the packaged {what} file {path} is missing; reinstall "
                             f"antiberty=={VERSION} (later versions download the weights instead)")
    return files


def cache_root() -> Path:
    if os.environ.get("TRANSFERLAB_CACHE"):
        return Path(os.environ["TRANSFERLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "transferlab"


def _stamp(files: dict[str, Path]) -> dict:
    return {"format": _FORMAT, **{k: [p.stat().st_size, p.stat().st_mtime_ns] for k, p in files.items()}}


def antiberty_folder() -> Path:
    """The converted ``save_pretrained`` folder (BertForMaskedLM + tokenizer), built on first use."""
    files = packaged_files()
    out = cache_root() / f"antiberty-{VERSION}"
    stamp = _stamp(files)
    marker = out / "source.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp and (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".antiberty-", dir=out.parent))  # then renamed: workers may race
    try:
        convert(files, tmp)
        (tmp / "source.json").write_text(json.dumps(stamp))
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:  # another process renamed its copy first
            if not marker.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted AntiBERTy's packaged weights into %s", out)
    return out


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The packaged state dict, loaded safely; a damaged file is one ModelError line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling raises many types (UnpicklingError, RuntimeError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model.name: antiberty: the packaged weights {path} cannot be read (corrupted? "
                         f"reinstall antiberty=={VERSION}): {first[:200]}") from None
    if not isinstance(state, dict) or "bert.encoder.layer.0.attention.self.query.weight" not in state:
        raise ModelError(f"model.name: antiberty: {path} is not AntiBERTy's state dict (no bert.encoder keys)")
    return state


def convert(files: dict[str, Path], out: Path) -> None:
    """Packaged files -> a BertForMaskedLM folder (safetensors) with the amino-acid tokenizer."""
    state = read_state(files["weights"])
    try:
        config = tf.BertConfig.from_json_file(str(files["config"]))
    except (OSError, ValueError) as e:
        raise ModelError(f"model.name: antiberty: {files['config']} cannot be read: {e}") from None
    config.architectures = ["BertForMaskedLM"]
    words = state[_WORDS]
    config.tie_word_embeddings = torch.equal(state.get("cls.predictions.decoder.weight", words), words)
    model = tf.BertForMaskedLM(config)
    dropped = ("cls.species", "cls.chain", "cls.graft", "bert.pooler.", "bert.embeddings.position_ids")
    keep = {k: v for k, v in state.items() if not k.startswith(dropped)}
    result = model.load_state_dict(keep, strict=False)
    tied = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ModelError(f"model.name: antiberty: the packaged weights do not fit a BERT: missing "
                         f"{missing[:3] or 'none'}, unexpected {result.unexpected_keys[:3] or 'none'}")
    model.save_pretrained(out)
    # BertForMaskedLM has no pooler; it rides along in the file so a ``pooler`` head or transplant finds it
    from safetensors.torch import load_file, save_file

    weights = out / "model.safetensors"
    saved = load_file(str(weights))
    saved.update({k: v.contiguous() for k, v in state.items() if k.startswith("bert.pooler.")})
    save_file(saved, str(weights), metadata={"format": "pt"})
    plain_tokenizer(files["vocab"]).save_pretrained(out)


_WORDS = "bert.embeddings.word_embeddings.weight"


# ---------------------------------------------------------------- the amino-acid tokenizer


def _backend(vocab: Path):
    """A WordPiece tokenizer over AntiBERTy's vocabulary that reads one residue per character.

    Hand-built with the ``tokenizers`` library because the package's BertTokenizer needs the
    residues space-separated (``"EVQLV"`` would be one unknown word)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    tokens = [t.strip() for t in vocab.read_text(encoding="utf-8").splitlines() if t.strip()]
    ids = {t: i for i, t in enumerate(tokens)}
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        if special not in ids:
            raise ModelError(f"model.name: antiberty: {vocab} has no {special} token")
    backend = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=1))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")])
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return backend


_SPECIALS = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
             "mask_token": "[MASK]"}


def plain_tokenizer(vocab: Path) -> tf.PreTrainedTokenizerFast:
    return tf.PreTrainedTokenizerFast(tokenizer_object=_backend(vocab), **_SPECIALS)


class AntibodyTokenizer(tf.PreTrainedTokenizerFast):
    """The amino-acid tokenizer that warns, once, when what it reads is not amino acids."""

    def __call__(self, *args, **kwargs):
        enc = super().__call__(*args, **kwargs)
        if not self.__dict__.get("_warned"):
            self._check_unknown(enc.get("input_ids"))
        return enc

    def _check_unknown(self, ids) -> None:
        if ids is None:
            return
        rows = ids.tolist() if hasattr(ids, "tolist") else ids
        rows = [rows] if rows and isinstance(rows[0], int) else rows
        special = set(self.all_special_ids) - {self.unk_token_id}
        seen = [t for row in rows for t in row if t not in special]
        unknown = sum(t == self.unk_token_id for t in seen)
        if unknown:
            self._warned = True
            rate = unknown / len(seen)
            log.warning("the AntiBERTy tokenizer mapped %d of %d tokens (%.1f%%) to [UNK]: it reads amino-acid "
                        "sequences (upper-case one-letter residues), not %s", unknown, len(seen), 100 * rate,
                        "English text" if rate > 0.2 else "other symbols")

    def save_pretrained(self, *args, **kwargs):  # saved as a plain fast tokenizer: it loads without us
        return plain_tokenizer_from(self).save_pretrained(*args, **kwargs)


def plain_tokenizer_from(tok: AntibodyTokenizer) -> tf.PreTrainedTokenizerFast:
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, **_SPECIALS)


def antibody_tokenizer(folder: Path | None = None) -> AntibodyTokenizer:
    """AntiBERTy's tokenizer, from the converted folder's tokenizer.json or the packaged vocab.txt."""
    if folder is None:
        return AntibodyTokenizer(tokenizer_object=_backend(packaged_files()["vocab"]), **_SPECIALS)
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return AntibodyTokenizer(tokenizer_object=backend, **_SPECIALS)


# ---------------------------------------------------------------- the aliases


def text_shape_config() -> tf.BertConfig:
    """A text BERT of AntiBERTy's shape with MiniLM's WordPiece vocabulary (30522 tokens, [PAD] = 0)."""
    return tf.BertConfig(**SHAPE, vocab_size=30522, pad_token_id=0)


def check_init(name: str, init: str) -> None:
    if name == "antiberty-text" and init != "random":
        raise SpecError("model.init: antiberty-text has no pretrained weights (it is AntiBERTy's shape with "
                        "MiniLM's vocabulary); set model.init: random and move AntiBERTy's layers in with "
                        "transplant: [{source: antiberty}]")
