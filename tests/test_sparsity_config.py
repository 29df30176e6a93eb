"""Config validation: INC keys and meanings, strict errors that name the key and the allowed values."""
import pytest
from omegaconf import OmegaConf

from prunelab.sparsity import GroupConfig, PruningConfig, parse_config


def test_defaults_are_inc_defaults_with_linear_only():
    (group,) = parse_config({"start_step": 1, "end_step": 1}).groups  # INC's step defaults raise: see below
    assert (group.target_sparsity, group.pruning_type, group.pattern) == (0.9, "snip_momentum", "4x1")
    assert (group.pruning_scope, group.sparsity_decay_type, group.pruning_frequency) == ("global", "exp", 1)
    assert (group.min_sparsity_ratio_per_op, group.max_sparsity_ratio_per_op) == (0.0, 0.98)
    assert group.pruning_op_types == ("Linear",)
    assert group.excluded_op_names == ("classifier", "pooler", ".*embeddings.*")


def test_group_keys_override_global_keys():
    config = parse_config(
        {
            "target_sparsity": 0.7,
            "pattern": "1x1",
            "pruning_type": "magnitude",
            "pruning_configs": [{"op_names": ["query"], "pattern": "2:4", "target_sparsity": 0.5}, {"op_names": ["dense"]}],
        }
    )
    first, second = config.groups
    assert (first.pattern, first.target_sparsity, first.op_names) == ("2:4", 0.5, ("query",))
    assert (second.pattern, second.target_sparsity, second.op_names) == ("1x1", 0.7, ("dense",))
    assert first.pruning_type == second.pruning_type == "magnitude"


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ValueError, match=r"unknown pruning key 'target_sparsty'.*allowed keys: target_sparsity"):
        parse_config({"target_sparsty": 0.8})
    with pytest.raises(ValueError, match=r"unknown pruning key pruning_configs\[1\]\.'reg_type'"):
        parse_config({"pruning_configs": [{}, {"reg_type": "group_lasso"}]})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("target_sparsity", 1.0, r"target_sparsity=1.0 is out of range: allowed \[0.0, 1.0\)"),
        ("target_sparsity", "0.8", r"target_sparsity='0.8' must be a number"),
        ("pruning_type", "l1", r"pruning_type='l1' is not allowed; choose one of: magnitude, gradient, snip"),
        ("pruning_scope", "layer", r"pruning_scope='layer' is not allowed; choose one of: global, local"),
        ("sparsity_decay_type", "step", r"sparsity_decay_type='step'.*linear, cos, exp, cube, cubic"),
        ("pruning_frequency", 0, r"pruning_frequency=0 is out of range: allowed integers >= 1"),
        ("start_step", 1.5, r"start_step=1.5 must be an integer"),
        ("pruning_op_types", ["Embedding"], r"pruning_op_types entry 'Embedding'.*Linear, Conv1d, Conv2d, Conv1D, Conv"),
        ("op_names", ["layer.(0"], r"op_names entry 'layer.\(0' is not a valid regular expression"),
        ("pattern", "4x", r"pattern='4x' is not a pattern; allowed:"),
        ("pattern", "4:2", r"N:M needs 1 <= N < M"),
    ],
)
def test_bad_values_name_key_and_allowed_values(key, value, message):
    with pytest.raises(ValueError, match=message):
        parse_config({key: value, "start_step": 1, "end_step": 1} if key != "start_step" else {key: value})


def test_pattern_read_by_yaml_as_int_explains_the_quoting_trap():
    loaded = OmegaConf.create("pattern: 2:4")  # YAML 1.1 sexagesimal: 2*60 + 4
    assert loaded.pattern == 124
    with pytest.raises(ValueError, match=r'pattern=124 is an integer.*quote it \("2:4"\) or write 2in4'):
        parse_config(loaded)


def test_2in4_is_an_alias_of_2_colon_4():
    assert parse_config({"pattern": "2in4", "target_sparsity": 0.5, "pruning_type": "magnitude"}).groups[0].pattern == "2:4"


def test_n_in_m_target_above_n_over_m_is_rejected():
    with pytest.raises(ValueError, match=r"target_sparsity=0.6 is above 2/4=0.5"):
        parse_config({"pattern": "2:4", "target_sparsity": 0.6, "pruning_type": "magnitude"})
    parse_config({"pattern": "2:4", "target_sparsity": 0.5, "pruning_type": "magnitude"})


def test_cross_key_checks():
    with pytest.raises(ValueError, match=r"end_step=3 is before start_step=5"):
        parse_config({"start_step": 5, "end_step": 3})
    with pytest.raises(ValueError, match=r"min_sparsity_ratio_per_op=0.5 exceeds max_sparsity_ratio_per_op=0.4"):
        parse_config({"min_sparsity_ratio_per_op": 0.5, "max_sparsity_ratio_per_op": 0.4, "target_sparsity": 0.45})
    with pytest.raises(ValueError, match=r"target_sparsity=0.99 must lie between .* max_sparsity_ratio_per_op=0.98"):
        parse_config({"target_sparsity": 0.99, "pruning_type": "magnitude"})


def test_group_error_names_the_group():
    with pytest.raises(ValueError, match=r"pruning_configs\[1\]\.pattern="):
        parse_config({"pruning_type": "magnitude", "pruning_configs": [{"pattern": "1x1"}, {"pattern": "banana"}]})


def test_gradient_one_shot_at_step_zero_has_no_gradients_yet():
    with pytest.raises(ValueError, match=r"one-shot prune needs start_step >= 1"):
        parse_config({})  # INC's defaults: snip_momentum, start_step = end_step = 0
    parse_config({"pruning_type": "magnitude"})
    parse_config({"pruning_type": "snip", "start_step": 3, "end_step": 3})
    parse_config({"target_sparsity": 0.0})  # nothing to prune, nothing to score


def test_progressive_needs_an_iterative_schedule():
    with pytest.raises(ValueError, match=r"pruning_frequency >= 2"):
        parse_config({"pruning_type": "magnitude_progressive", "start_step": 0, "end_step": 10, "pruning_frequency": 1})
    group = parse_config({"pruning_type": "snip_progressive", "start_step": 0, "end_step": 10, "pruning_frequency": 4}).groups[0]
    assert group.progressive and group.criterion == "snip"


def test_dict_config_and_round_trip():
    source = {"target_sparsity": 0.5, "pattern": "1xchannel", "pruning_type": "magnitude", "op_names": ["dense"]}
    config = parse_config(OmegaConf.create(source))
    assert config == parse_config(source)
    assert PruningConfig.from_dict(config.to_dict()) == config
    assert parse_config(config) is config
    assert parse_config(GroupConfig(target_sparsity=0.3, pruning_type="magnitude")).groups[0].target_sparsity == 0.3


def test_non_mapping_config_is_rejected():
    with pytest.raises(ValueError, match=r"must be a dict, an OmegaConf DictConfig or a PruningConfig"):
        parse_config(["target_sparsity", 0.8])
    with pytest.raises(ValueError, match=r"pruning_configs='query' must be a list of dicts"):
        parse_config({"pruning_configs": "query"})
