"""Where models and tokenizers come from: a pretrained checkpoint (hub id or local directory) or
``tiny``, a small random BERT built from a config with nothing to download.

Both kinds are built by Hydra from ``conf/model/<name>.yaml`` and offer the same three calls, so
the run never asks which kind it holds.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import to_absolute_path
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing
from transformers import AutoConfig, AutoTokenizer, BertConfig, PreTrainedTokenizerFast

from prunelab.errors import ConfigError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Models whose position ids start after the padding index (transformers'
# create_position_ids_from_input_ids): pad_token_id + 1 rows of the position table hold no input.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "ibert",
                     "roberta-prelayernorm", "xmod", "lilt"}


@dataclass
class PretrainedModel:
    """A Hugging Face checkpoint.

    name: short name in summaries (``bert-mini``); name_or_path: hub id or local model directory
    (relative paths are taken from the directory the command was started in); tokenizer: where the
    tokenizer lives when not beside the weights.
    """

    name: str
    name_or_path: str
    tokenizer: str | None = None

    def load_tokenizer(self):
        source = _local_or_hub(self.tokenizer or self.name_or_path)
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            field = "model.tokenizer" if self.tokenizer else "model.name_or_path"
            raise ConfigError(f"{field}={source}: no tokenizer can be loaded there ({_first_line(error)}){_HINT}") from error

    def load_model(self, auto_class: type, **model_kwargs):
        source = _local_or_hub(self.name_or_path)
        try:
            return auto_class.from_pretrained(source, **model_kwargs)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.name_or_path={source}: cannot load a model ({_first_line(error)}){_HINT}") from error

    def max_input_tokens(self) -> int | None:
        """The longest input the model's position table holds (None: the model has no such limit),
        read from its config alone, before any weights load."""
        source = _local_or_hub(self.name_or_path)
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.name_or_path={source}: cannot load a model config ({_first_line(error)}){_HINT}") from error
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and config.model_type in _OFFSET_POSITIONS:
            positions -= (config.pad_token_id or 0) + 1
        return positions

    @property
    def source(self) -> str:
        return _local_or_hub(self.name_or_path)


@dataclass
class TinyBert:
    """A small randomly initialised BERT for tests and offline demos.

    The tokenizer is a character-level WordPiece (lower-case letters, digits, punctuation, each also
    as a ``##`` continuation piece) built in memory, so it needs no file and no download;
    ``tokenizer`` may instead name any local or hub tokenizer.
    """

    name: str = "tiny"
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    tokenizer: str | None = None

    def load_tokenizer(self):
        if self.tokenizer:
            return PretrainedModel(self.name, self.tokenizer).load_tokenizer()
        return character_tokenizer()

    def load_model(self, auto_class: type, **model_kwargs):
        config = BertConfig(
            vocab_size=len(self.load_tokenizer()),
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            **model_kwargs,
        )
        return auto_class.from_config(config)

    def max_input_tokens(self) -> int:
        return self.max_position_embeddings

    @property
    def source(self) -> str:
        return f"tiny BERT from config (hidden {self.hidden_size}, {self.num_hidden_layers} layers)"


def character_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer whose vocabulary is single characters (first and
    continuation pieces), built in memory."""
    characters = string.ascii_lowercase + string.digits + string.punctuation
    pieces = [*SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters)]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    backend = Tokenizer(WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = BertNormalizer(lowercase=True)
    backend.pre_tokenizer = BertPreTokenizer()
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _local_or_hub(name_or_path: str) -> str:
    """An existing local path made absolute (Hydra may run elsewhere); anything else is a hub id."""
    local = Path(to_absolute_path(name_or_path))
    return str(local) if local.exists() else name_or_path


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


_HINT = "; give a hub id or a local Hugging Face model directory (offline: set HF_HUB_OFFLINE=1 and a local path)"
