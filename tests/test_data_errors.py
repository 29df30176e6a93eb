"""Bad local data files end in one ConfigError line naming the file, the line and what is wrong."""
import json

import pytest
from conftest import write_tiny_glue, write_tiny_squad

from prunelab.app.config import build
from prunelab.errors import ConfigError
from prunelab.models import character_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return character_tokenizer()


@pytest.fixture
def glue_root(tmp_path):
    return write_tiny_glue(tmp_path)


def _glue_task(make_config, name, root, **overrides):
    cfg = make_config(f"task={name}")
    kwargs = dict(data_root=str(root), max_length=32, max_train_samples=None, max_eval_samples=None, seed=0)
    kwargs.update(overrides)
    return build(cfg.task, **kwargs)


def _squad_task(make_config, root, **overrides):
    cfg = make_config("task=squad")
    kwargs = dict(data_root=str(root), max_length=32, max_train_samples=None, max_eval_samples=None, seed=0,
                  split_dev_by_article=1)
    kwargs.update(overrides)
    return build(cfg.task, **kwargs)


def _set_lines(path, replacements: dict[int, str]) -> None:
    """Replace 1-based lines of ``path`` (a line number past the end appends)."""
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    for number, text in sorted(replacements.items()):
        if number > len(lines):
            lines.append(text)
        else:
            lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _message(task, tokenizer) -> str:
    with pytest.raises(ConfigError) as caught:
        task.load(tokenizer)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- GLUE


def test_empty_label_names_its_line_counting_the_header_and_skipped_rows(make_config, glue_root, tokenizer):
    path = glue_root / "glue/SST-2/train.tsv"
    # line 1 is the header; line 3 is cut short (skipped, as before); line 6 has an empty label
    _set_lines(path, {3: "cut short", 6: "a zesty film \t"})
    message = _message(_glue_task(make_config, "sst2", glue_root), tokenizer)
    assert message == f"{path}:6: label '' is not an integer (expected 0 or 1)"


def test_label_out_of_range_for_num_labels(make_config, glue_root, tokenizer):
    path = glue_root / "glue/MRPC/train.tsv"
    _set_lines(path, {5: "7\t3\t4\tthe film\tit was zen , a"})
    message = _message(_glue_task(make_config, "mrpc", glue_root), tokenizer)
    assert message == f"{path}:5: label '7' is out of range (expected 0 or 1: task.num_labels=2)"


def test_negative_label_is_out_of_range_in_the_eval_file(make_config, glue_root, tokenizer):
    path = glue_root / "glue/SST-2/dev.tsv"
    _set_lines(path, {49: "a zany film \t-1"})  # the last of the 48 rows
    message = _message(_glue_task(make_config, "sst2", glue_root), tokenizer)
    assert message == f"{path}:49: label '-1' is out of range (expected 0 or 1: task.num_labels=2)"


def test_headerless_file_counts_lines_from_the_first_row(make_config, glue_root, tokenizer):
    path = glue_root / "glue/CoLA/train.tsv"
    _set_lines(path, {3: "src2\tyes\t\tthe film was zen"})
    message = _message(_glue_task(make_config, "cola", glue_root), tokenizer)
    assert message == f"{path}:3: label 'yes' is not an integer (expected 0 or 1)"


def test_word_label_not_in_the_task_label_words(make_config, glue_root, tokenizer):
    path = glue_root / "glue/RTE/train.tsv"
    _set_lines(path, {10: "8\tthe film\tit was zen\tmaybe"})
    message = _message(_glue_task(make_config, "rte", glue_root), tokenizer)
    assert message == f"{path}:10: label 'maybe' is not one of the task's label words entailment, not_entailment"


def test_mnli_eval_file_word_label_error_names_dev_matched(make_config, glue_root, tokenizer):
    path = glue_root / "glue/MNLI/dev_matched.tsv"
    _set_lines(path, {2: "0\t0\t0n\tfiction\t()\t()\t()\t()\ta\tb\tneutral\t-"})
    message = _message(_glue_task(make_config, "mnli", glue_root), tokenizer)
    assert message == (
        f"{path}:2: label '-' is not one of the task's label words entailment, neutral, contradiction"
    )


@pytest.mark.parametrize("value", ["n/a", "nan"])
def test_regression_label_that_is_not_a_number(make_config, glue_root, tokenizer, value):
    path = glue_root / "glue/STS-B/train.tsv"
    _set_lines(path, {4: f"2\tmain\tf\t2012\t2\tnone\tnone\ta\tb\t{value}"})
    message = _message(_glue_task(make_config, "stsb", glue_root), tokenizer)
    assert message == f"{path}:4: label '{value}' is not a number (task.num_labels=1: a regression score is expected)"


def test_empty_file_says_which_header_it_expected(make_config, glue_root, tokenizer):
    path = glue_root / "glue/MRPC/train.tsv"
    path.write_bytes(b"")
    message = _message(_glue_task(make_config, "mrpc", glue_root), tokenizer)
    assert message == (
        f"{path}: file is empty (expected a header line with the columns '#1 String', '#2 String', 'Quality')"
    )


def test_empty_headerless_file(make_config, glue_root, tokenizer):
    path = glue_root / "glue/CoLA/dev.tsv"
    path.write_bytes(b"")
    message = _message(_glue_task(make_config, "cola", glue_root), tokenizer)
    assert message == f"{path}: file is empty (expected rows of at least 4 tab-separated columns, no header line)"


@pytest.mark.parametrize("after_header", ["", "\n\n"])
def test_header_without_data_rows(make_config, glue_root, tokenizer, after_header):
    path = glue_root / "glue/SST-2/train.tsv"
    path.write_text("sentence\tlabel\n" + after_header, encoding="utf-8")
    message = _message(_glue_task(make_config, "sst2", glue_root), tokenizer)
    assert message == f"{path}: no data rows after the header"


def test_header_missing_a_column(make_config, glue_root, tokenizer):
    path = glue_root / "glue/SST-2/train.tsv"
    _set_lines(path, {1: "text\tlabel"})
    message = _message(_glue_task(make_config, "sst2", glue_root), tokenizer)
    assert message == (
        f"{path}:1: no column 'sentence' in the header line (its columns: 'text', 'label'); "
        f"task.local.columns names the columns to read"
    )


def test_a_file_whose_rows_are_all_too_short_is_not_silently_emptied(make_config, glue_root, tokenizer):
    path = glue_root / "glue/CoLA/train.tsv"
    path.write_text("".join(f"src{i},1,,the film\n" for i in range(5)), encoding="utf-8")  # commas, not tabs
    message = _message(_glue_task(make_config, "cola", glue_root), tokenizer)
    assert message == (
        f"{path}:1: row has 1 tab-separated column, at least 4 needed; all 5 data rows are this short, "
        f"so none is left (is the file tab-separated?)"
    )


def test_short_rows_among_good_ones_are_still_skipped_and_noted(make_config, glue_root, tokenizer):
    path = glue_root / "glue/SST-2/train.tsv"
    _set_lines(path, {3: "cut short", 98: "", 99: "also short"})
    data = _glue_task(make_config, "sst2", glue_root).load(tokenizer)
    assert "train.tsv: 3 malformed rows skipped" in data.notes
    assert len(data.train) == 95


def test_not_utf8_names_the_line(make_config, glue_root, tokenizer):
    path = glue_root / "glue/SST-2/train.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = b"caf\xe9 film \t1"  # line 4, Latin-1
    path.write_bytes(b"\n".join(lines))
    message = _message(_glue_task(make_config, "sst2", glue_root), tokenizer)
    assert message == f"{path}:4: not valid UTF-8 (byte 0xe9: invalid continuation byte); save the file as UTF-8"


def test_missing_file_names_it_and_data_root(make_config, glue_root, tokenizer):
    path = glue_root / "glue/QNLI/dev.tsv"
    path.unlink()
    message = _message(_glue_task(make_config, "qnli", glue_root), tokenizer)
    assert message == (
        f"data_root={glue_root}: {path} not found; expected the GLUE download layout "
        f"<data_root>/glue/QNLI/{{train.tsv,dev.tsv}}"
    )


# --------------------------------------------------------------------------------------------- SQuAD


@pytest.fixture
def squad_root(tmp_path):
    return write_tiny_squad(tmp_path)


def _edit_squad(root, edit) -> object:
    path = root / "squad/dev-v1.1.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_invalid_json_names_line_and_column(make_config, squad_root, tokenizer):
    path = squad_root / "squad/dev-v1.1.json"
    path.write_text('{"version": "1.1",\n "data": [\n  {"title": "x" "paragraphs": []}\n ]\n}', encoding="utf-8")
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message == f"{path}:3:17: not valid JSON (Expecting ',' delimiter)"


def test_truncated_json(make_config, squad_root, tokenizer):
    path = squad_root / "squad/dev-v1.1.json"
    path.write_text(path.read_text(encoding="utf-8")[:50], encoding="utf-8")
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message.startswith(f"{path}:1:") and "not valid JSON (" in message


def test_empty_json_file(make_config, squad_root, tokenizer):
    path = squad_root / "squad/dev-v1.1.json"
    path.write_text("\n", encoding="utf-8")
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message == (
        f'{path}: file is empty (expected the official SQuAD layout {{"version": ..., "data": '
        f'[{{"title", "paragraphs": [{{"context", "qas": [...]}}]}}]}})'
    )


def test_json_without_data(make_config, squad_root, tokenizer):
    path = _edit_squad(squad_root, lambda d: d.pop("data"))
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message.startswith(f"{path}: no 'data' at the top level (found keys ['version']; expected the official")
    path.write_text("[]", encoding="utf-8")
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message.startswith(f"{path}: no 'data' at the top level (found a JSON list; expected the official")


def test_article_missing_paragraphs(make_config, squad_root, tokenizer):
    path = _edit_squad(squad_root, lambda d: d["data"][2].pop("paragraphs"))
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message == f"{path}: data[2] (title 'Japan'): no 'paragraphs' key (expected 'title', 'paragraphs')"


def test_paragraph_missing_context(make_config, squad_root, tokenizer):
    path = _edit_squad(squad_root, lambda d: d["data"][4]["paragraphs"][0].pop("context"))
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message == f"{path}: data[4].paragraphs[0] (title 'Egypt'): no 'context' key (expected 'context', 'qas')"


def test_question_missing_its_text(make_config, squad_root, tokenizer):
    path = _edit_squad(squad_root, lambda d: d["data"][1]["paragraphs"][0]["qas"][0].pop("question"))
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message == (
        f"{path}: data[1].paragraphs[0].qas[0] (id '1-0'): no 'question' key (expected 'id', 'question', 'answers')"
    )


def test_question_that_is_null_is_found_by_the_type_check(make_config, squad_root, tokenizer):
    def edit(document):
        document["data"][3]["paragraphs"][0]["qas"][0]["question"] = None

    path = _edit_squad(squad_root, edit)
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message == f"{path}: data[3].paragraphs[0].qas[0] (id '3-0'): 'question' is null, expected a string"


def test_answer_start_that_is_not_an_integer(make_config, squad_root, tokenizer):
    def edit(document):
        document["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = "x"

    path = _edit_squad(squad_root, edit)
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message == (
        f"{path}: data[0].paragraphs[0].qas[0].answers[0] (question id '0-0'): 'answer_start' is \"x\", "
        f"expected an integer"
    )


def test_json_without_questions(make_config, squad_root, tokenizer):
    path = _edit_squad(squad_root, lambda d: [a["paragraphs"][0].update(qas=[]) for a in d["data"]])
    message = _message(_squad_task(make_config, squad_root), tokenizer)
    assert message == f"{path}: no questions ('data' holds 6 articles but not one question)"


def test_missing_squad_files_name_the_file_and_data_root(make_config, tmp_path, squad_root, tokenizer):
    message = _message(_squad_task(make_config, squad_root, split_dev_by_article=None), tokenizer)
    assert message == (
        f"data_root={squad_root}: no SQuAD v1.1 training file ({squad_root}/squad/train-v1.1.json not found). "
        f"To train on part of the dev set, set task.split_dev_by_article=N: it trains on the other articles "
        f"and evaluates on N held-out dev articles."
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _message(_squad_task(make_config, empty), tokenizer)
    assert message == (
        f"data_root={empty}: {empty}/squad/dev-v1.1.json not found; expected the official SQuAD v1.1 files "
        f"<data_root>/squad/dev-v1.1.json (and train-v1.1.json, or set task.split_dev_by_article=N)"
    )
