"""INC-style pruning recipes (YAML files) read into engine keys; every mistake is one line naming
the file, and the line where one exists."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import prunelab
from prunelab.app.inc_recipe import INC1_NAMES, read_pruning_config
from prunelab.errors import ConfigError
from prunelab.sparsity.config import KEYS

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "inc_recipe.yaml"

FLAT = """\
pruning_type: snip_momentum
pattern: 4x1
target_sparsity: 0.8
excluded_op_names: [classifier, pooler, ".*embeddings.*"]
start_step: 230
end_step: 1380
pruning_frequency: 29
"""
FLAT_KEYS = {
    "pruning_type": "snip_momentum", "pattern": "4x1", "target_sparsity": 0.8,
    "excluded_op_names": ["classifier", "pooler", ".*embeddings.*"],
    "start_step": 230, "end_step": 1380, "pruning_frequency": 29,
}


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path):
    with pytest.raises(ConfigError) as raised:
        read_pruning_config(path)
    message = str(raised.value)
    assert "\n" not in message
    return message


def indented(text, spaces):
    return textwrap.indent(text, " " * spaces)


@pytest.mark.parametrize("layout", [
    FLAT,
    "pruning:\n" + indented(FLAT, 2),
    "version: 1.0\nmodel:\n  name: bert-mini\npruning:\n  approach:\n    weight_compression:\n" + indented(FLAT, 6),
    "pruning:\n  approach:\n    weight_compression_pytorch:\n" + indented(FLAT, 6),
], ids=["flat", "under-pruning", "inc-approach", "inc-approach-pytorch"])
def test_every_layout_gives_the_same_engine_keys(tmp_path, layout):
    assert read_pruning_config(write(tmp_path, layout)) == FLAT_KEYS


def test_groups_in_pruning_configs_and_str_paths(tmp_path):
    path = write(tmp_path, """\
        pattern: 4x1
        target_sparsity: 0.8
        start_step: 1
        end_step: 1
        pruning_configs:
          - op_names: ['intermediate\\.dense']
          - !Pruner
              op_names: [attention]
              pattern: "2:4"
              target_sparsity: 0.5
    """)
    assert read_pruning_config(str(path)) == {
        "pattern": "4x1", "target_sparsity": 0.8, "start_step": 1, "end_step": 1,
        "pruning_configs": [{"op_names": ["intermediate\\.dense"]},
                            {"op_names": ["attention"], "pattern": "2:4", "target_sparsity": 0.5}],
    }


@pytest.mark.parametrize("written", ["2:4", '"2:4"', "'2:4'", "2in4", "1:4", "4:8"])
def test_n_in_m_patterns_quoted_or_not_stay_strings(tmp_path, written):
    # PyYAML's YAML 1.1 reads a bare 2:4 as the base-60 integer 124; the reader keeps the text.
    path = write(tmp_path, f"pattern: {written}\ntarget_sparsity: 0.25\npruning_type: magnitude\npruning_configs:\n  - pattern: {written}\n")
    recipe = read_pruning_config(path)
    assert recipe["pattern"] == recipe["pruning_configs"][0]["pattern"] == written.strip("'\"")


def test_base_60_numbers_are_read_nowhere_but_ordinary_numbers_are(tmp_path):
    path = write(tmp_path, "start_step: 1:30\nend_step: 0x10\ntarget_sparsity: 5e-1\n")
    assert error_of(path) == f"pruning_config={path}: start_step='1:30' must be an integer >= 0"
    path = write(tmp_path, "start_step: 10\nend_step: 20\npruning_frequency: 0x5\ntarget_sparsity: 0.5\n")
    assert read_pruning_config(path)["pruning_frequency"] == 5


def test_a_pattern_written_as_a_number_names_the_yaml_trap(tmp_path):
    path = write(tmp_path, "pattern: 124\n")
    message = error_of(path)
    assert message.startswith(f"pruning_config={path}: pattern=124 is an integer. YAML 1.1 reads an unquoted 2:4")


@pytest.mark.parametrize("old, new", sorted(INC1_NAMES.items()))
@pytest.mark.parametrize("in_group", [False, True], ids=["global", "group"])
def test_inc1_names_fail_with_file_line_and_todays_key(tmp_path, old, new, in_group):
    body = ["# an INC 1.x recipe", "target_sparsity: 0.8", "", "pattern: 4x1"]
    if in_group:
        body += ["pruning_configs:", "  - op_names: [attention]", f"    {old}: x"]
    else:
        body += ["start_step: 2", "end_step: 2", f"{old}: x"]
    path = write(tmp_path, "\n".join(body) + "\n")
    assert error_of(path) == f"pruning_config={path}:7: {old!r} is INC 1.x's name; today's key is {new!r}"


def test_inc1_names_fail_in_the_inc_yaml_layout_with_the_line_in_the_file(tmp_path):
    path = write(tmp_path, """\
        model:
          name: bert-mini
        pruning:
          approach:
            weight_compression_pytorch:
              target_sparsity: 0.9
              prune_domain: global
    """)
    assert error_of(path) == f"pruning_config={path}:7: 'prune_domain' is INC 1.x's name; today's key is 'pruning_scope'"
    path = write(tmp_path, """\
        pruning:
          approach:
            weight_compression:
              target_sparsity: 0.9
              pruners:
                - !Pruner
                    pattern: 4x1
    """)
    assert error_of(path) == f"pruning_config={path}:5: 'pruners' is INC 1.x's name; today's key is 'pruning_configs'"


def test_every_engine_key_is_accepted_and_inc1_names_are_not_engine_keys():
    assert not set(INC1_NAMES) & {*KEYS, "pruning_configs"}
    assert set(INC1_NAMES.values()) <= {*KEYS, "pruning_configs"}


def test_unknown_keys_name_file_line_and_allowed_keys(tmp_path):
    path = write(tmp_path, "target_sparsity: 0.8\npattern: 4x1\ninitial_sparsity: 0.0\n")
    assert error_of(path) == (
        f"pruning_config={path}:3: unknown pruning key 'initial_sparsity'; allowed keys: "
        "target_sparsity, pruning_type, pattern, op_names, excluded_op_names, pruning_op_types, start_step, "
        "end_step, pruning_frequency, pruning_scope, sparsity_decay_type, min_sparsity_ratio_per_op, "
        "max_sparsity_ratio_per_op, pruning_configs"
    )
    path = write(tmp_path, "pattern: 4x1\npruning_configs:\n  - op_names: [a]\n  - targt_sparsity: 0.5\n")
    assert error_of(path).startswith(f"pruning_config={path}:4: unknown pruning key 'targt_sparsity'; allowed keys: ")


@pytest.mark.parametrize("text, line, message", [
    ("pruning:\n  pattern: 4x1\ntrain:\n  epoch: 3\n", 3,
     "unknown key 'train' at the top level beside 'pruning'; allowed keys: pruning, version, model"),
    ("pruning:\n  approach:\n    weight_compression: {}\n  train: {}\n", 4,
     "unknown key 'train' under 'pruning' beside 'approach'; allowed keys: approach"),
    ("pruning:\n  approach:\n    magnitude: {}\n", 3,
     "unknown key 'magnitude' under 'pruning.approach'; allowed keys: weight_compression, weight_compression_pytorch"),
    ("pruning:\n  approach:\n    weight_compression: {}\n    weight_compression_pytorch: {}\n", 3,
     "'pruning.approach' holds both weight_compression and weight_compression_pytorch; keep one"),
    ("pruning:\n  approach: {}\n", 2,
     "'pruning.approach' must hold weight_compression or weight_compression_pytorch"),
    ("pruning:\n  approach:\n    weight_compression: [4x1]\n", 3,
     "'pruning.approach.weight_compression' must be a mapping of pruning keys, got a list"),
    ("pruning:\n", 1, "'pruning' must be a mapping of pruning keys, got an empty value"),
    ("pattern: 4x1\ntarget_sparsity: 0.5\npattern: 2:4\n", 3, "'pattern' is set twice (first at line 1); keep one"),
])
def test_layout_mistakes_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    assert error_of(path) == f"pruning_config={path}:{line}: {message}"


def test_merge_keys_and_anchors_work(tmp_path):
    path = write(tmp_path, """\
        pattern: 4x1
        pruning_type: magnitude
        pruning_configs:
          - &attention {op_names: [attention], pattern: "2:4", target_sparsity: 0.5}
          - <<: *attention
            op_names: [intermediate]
    """)
    assert read_pruning_config(path)["pruning_configs"][1] == {"op_names": ["intermediate"], "pattern": "2:4", "target_sparsity": 0.5}


@pytest.mark.parametrize("text, message", [
    ("pattern: [4x1\n", r":2: not valid YAML: expected ',' or ']', but got '<stream end>'$"),
    ("pattern: 4x1\n  target_sparsity: 0.5\n", r":2: not valid YAML: mapping values are not allowed here$"),
    ("- pattern: 4x1\n", r": must be a mapping of pruning keys \(target_sparsity, .*, pruning_configs\), got a list$"),
    ("4x1\n", r": must be a mapping of pruning keys \(.*\), got the value '4x1'$"),
    ("# nothing yet\n", r": must be a mapping of pruning keys \(.*\), got an empty file$"),
    ("pattern: !!python/object:os.system ls\n", r":1: not valid YAML: could not determine a constructor"),
    ("a: 1\n---\nb: 2\n", r":2: not valid YAML: but found another document$"),
])
def test_files_that_are_not_a_yaml_mapping_fail_in_one_line(tmp_path, text, message):
    path = write(tmp_path, text)
    assert error_of(path).startswith(f"pruning_config={path}")
    assert pytest.raises(ConfigError, read_pruning_config, path).match(message)


def test_missing_file_directory_and_bad_encoding(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"pruning_config={tmp_path / 'nope.yaml'}: no such file"
    assert error_of(tmp_path) == f"pruning_config={tmp_path}: not a file"
    path = tmp_path / "latin1.yaml"
    path.write_bytes("pattern: '4x1' # caf\xe9\n".encode("latin-1"))
    assert error_of(path).startswith(f"pruning_config={path}: cannot be read: 'utf-8' codec can't decode")


def test_values_the_engine_rejects_are_config_errors_prefixed_with_the_file(tmp_path):
    path = write(tmp_path, "pattern: 4x1\npruning_configs:\n  - pruning_scope: everywhere\n")
    assert error_of(path) == (
        f"pruning_config={path}: pruning_configs[0].pruning_scope='everywhere' is not allowed; choose one of: global, local"
    )
    path = write(tmp_path, "pattern: '2:4'\ntarget_sparsity: 0.8\n")
    assert error_of(path).startswith(f"pruning_config={path}: target_sparsity=0.8 is above 2/4=0.5")


def test_the_example_recipe_prunes_a_tiny_bert_in_two_groups():
    from transformers import BertConfig, BertForSequenceClassification

    recipe = read_pruning_config(EXAMPLE)
    assert {k: recipe[k] for k in ("pruning_type", "pattern", "target_sparsity")} == {
        "pruning_type": "snip_momentum", "pattern": "4x1", "target_sparsity": 0.8}
    assert recipe["excluded_op_names"] == ["classifier", "pooler", ".*embeddings.*"]
    assert recipe["pruning_configs"][1] == {"op_names": ["attention"], "pattern": "2:4", "target_sparsity": 0.5}
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    pruning = prunelab.prepare_pruning(BertForSequenceClassification(config), recipe)
    groups = pruning.report()["groups"]
    assert [(g["pattern"], g["target_sparsity"], len(g["ops"])) for g in groups] == [("4x1", 0.8, 4), ("2:4", 0.5, 8)]
    assert all("attention" not in op for op in groups[0]["ops"])


def test_the_reader_imports_no_hydra():
    code = ("import sys, prunelab.app.inc_recipe; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
