"""Dataset reading: formats, column detection, label mapping and the errors for bad data."""

import json

import pytest

from edgekit.data import encode_labels, label_names, load_dataset
from edgekit.errors import DataError


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_tsv_autodetects_sentence_and_label(tmp_path):
    p = write(tmp_path, "d.tsv", 'label\tsentence\n1\ta "quoted" film\n0\tdull\n')
    ds = load_dataset(p)
    assert (ds.text_column, ds.label_column) == ("sentence", "label")
    assert ds.texts == ['a "quoted" film', "dull"] and ds.labels == ["1", "0"]


def test_csv_and_jsonl_with_named_columns(tmp_path):
    csv_path = write(tmp_path, "d.csv", "review,stars\n\"good, really\",pos\nbad,neg\n")
    ds = load_dataset(csv_path, text_column="review", label_column="stars")
    assert ds.texts[0] == "good, really" and ds.labels == ["pos", "neg"]
    rows = [{"text": "fine", "label": 1}, {"text": "awful", "label": 0}]
    jl = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_dataset(jl)
    assert ds.texts == ["fine", "awful"] and ds.labels == ["1", "0"]


@pytest.mark.parametrize("content, match", [
    ("label\tsentence\n", "empty"),
    ("", "empty"),
    ("label\tbody\n1\tx\n", "no text column"),
    (b"label\tsentence\n1\tcaf\xe9\n", "not valid UTF-8"),
])
def test_bad_files_raise_one_line_data_errors(tmp_path, content, match):
    p = write(tmp_path, "bad.tsv", content)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(p)
    assert "\n" not in info.value.message


def test_missing_named_column_lists_the_columns(tmp_path):
    p = write(tmp_path, "d.tsv", "label\tsentence\n1\tx\n")
    with pytest.raises(DataError, match="its columns are: label, sentence"):
        load_dataset(p, text_column="text")


def test_missing_file_and_unsupported_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="unsupported format"):
        load_dataset(write(tmp_path, "d.parquet", "x"))


def test_encode_labels_accepts_names_and_ids_and_rejects_unknown():
    label2id = {"negative": 0, "positive": 1}
    assert encode_labels(["positive", "0", "NEGATIVE", "1.0"], label2id) == [1, 0, 0, 1]
    with pytest.raises(DataError, match="unknown to the model: 'neutral'.*negative \\(0\\), positive \\(1\\)"):
        encode_labels(["positive", "neutral"], label2id)


def test_label_names_sorts_numbers_numerically():
    assert label_names(["10", "2", "1"]) == ["1", "2", "10"]
    assert label_names(["pos", "neg"]) == ["neg", "pos"]


def test_subset_is_seeded_and_keeps_order(tmp_path):
    p = write(tmp_path, "d.tsv", "label\tsentence\n" + "".join(f"{i % 2}\ts{i}\n" for i in range(20)))
    ds = load_dataset(p)
    a, b = ds.subset(5, seed=1), ds.subset(5, seed=1)
    assert a.texts == b.texts and len(a) == 5
    assert [int(t[1:]) for t in a.texts] == sorted(int(t[1:]) for t in a.texts)


def test_token_classification_jsonl_and_conll(tmp_path):
    from edgekit.data import encode_tags, load_token_dataset

    jsonl = tmp_path / "ner.jsonl"
    jsonl.write_text('{"tokens": ["Alice", "lives", "in", "Paris"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]}\n'
                     '{"tokens": ["Bob"], "ner_tags": [1]}\n')
    ds = load_token_dataset(jsonl)
    assert ds.texts == ["Alice lives in Paris", "Bob"] and ds.tags[1] == ["1"]
    assert ds.word_spans(0) == [(0, 5), (6, 11), (12, 14), (15, 20)]
    assert encode_tags(ds.tags, {"O": 0, "B-PER": 1, "B-LOC": 2}) == [[1, 0, 0, 2], [1]]
    conll = tmp_path / "ner.conll"
    conll.write_text("-DOCSTART- -X- O O\n\nAlice NNP B-PER\nlives VBZ O\n\nParis NNP B-LOC\n")
    ds = load_token_dataset(conll)
    assert ds.words == [["Alice", "lives"], ["Paris"]] and ds.tags == [["B-PER", "O"], ["B-LOC"]]
    assert load_dataset(jsonl, require_labels=False).texts[0] == "Alice lives in Paris"  # bench / calibration
    assert load_dataset(conll, require_labels=False).texts == ["Alice lives", "Paris"]


def test_token_rows_with_mismatched_tags_are_one_line_errors(tmp_path):
    from edgekit.data import load_token_dataset

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["a", "b"], "ner_tags": ["O"]}\n')
    with pytest.raises(DataError, match="has 2 words but 1 tags"):
        load_token_dataset(bad)
    bad.write_text('{"tokens": "a b", "ner_tags": ["O"]}\n')
    with pytest.raises(DataError, match="not a non-empty list of words"):
        load_token_dataset(bad)


def test_an_unterminated_csv_quote_is_an_error_not_fewer_rows(tmp_path):
    """The quote swallowed every row after it: 2 rows read as 1, exit 0."""
    bad = tmp_path / "rows.csv"
    bad.write_text('label,sentence\n1,"good film\n0,bad film\n')
    with pytest.raises(DataError, match="is not valid csv: unexpected end of data"):
        load_dataset(bad)
    good = tmp_path / "good.csv"
    good.write_text('label,sentence\n1,"a ""quoted"" film, fine"\n0,bad film\n')
    assert load_dataset(good).texts == ['a "quoted" film, fine', "bad film"]


def test_numeric_label_names_are_read_one_way_for_the_whole_file():
    """A model named "1", "2" (ids 0, 1) read a file of ids 0/1 as 0 -> id 0 but 1 -> name "1" = id 0."""
    label2id = {"1": 0, "2": 1}
    assert encode_labels(["0", "1", "1", "0"], label2id) == [0, 1, 1, 0]  # "0" is no name: ids throughout
    assert encode_labels(["1", "2", "2"], label2id) == [0, 1, 1]          # "2" is no id: names throughout
    assert encode_labels(["1", "1"], label2id) == [0, 0]  # names and ids both fit: names, as a fine-tuned model's
    assert encode_labels(["0", "1"], {"0": 0, "1": 1}) == [0, 1]  # both readings agree: fine


def test_the_whole_file_decides_how_a_sample_is_read():
    """check --max-samples read a sample of a star-rating file of ids 0-4 as names when no row of the sample was
    "0": every label one class off."""
    stars = {"1": 0, "2": 1, "3": 2, "4": 3, "5": 4}
    assert encode_labels(["1", "2", "4"], stars, reading_of=["0", "1", "2", "4"]) == [1, 2, 4]
    assert encode_labels(["1", "2", "4"], stars, reading_of=["1", "2", "4", "5"]) == [0, 1, 3]


def test_line_breaks_inside_a_text_keep_it_one_row(tmp_path):
    """str.splitlines split a TSV text at U+2028 / U+0085 (one row read as two), joined a quoted CSV field's lines
    without their break, and refused valid JSONL holding U+2028 in a string."""
    tsv = tmp_path / "u.tsv"
    tsv.write_text("sentence\nthe film\u2028was fine\nthe plot\u0085was not\n", encoding="utf-8")
    assert load_dataset(tsv, require_labels=False).texts == ["the film\u2028was fine", "the plot\u0085was not"]
    csv_file = tmp_path / "q.csv"
    csv_file.write_text('label,sentence\n1,"line one\nline two"\n0,plain\n', encoding="utf-8")
    assert load_dataset(csv_file).texts == ["line one\nline two", "plain"]
    jsonl = tmp_path / "u.jsonl"
    jsonl.write_text("\n".join(json.dumps({"label": i, "text": f"row {i}\u2028end"}, ensure_ascii=False)
                               for i in range(2)) + "\n", encoding="utf-8")
    assert load_dataset(jsonl).texts == ["row 0\u2028end", "row 1\u2028end"]


@pytest.mark.parametrize("content,args,match", [
    ("label\tsentence\tlabel\n1\tgood\t0\n", {}, "names column 'label' more than once"),  # the last one was read
    ("label\tsentence\n1\tgood\n", {"text_column": "label"}, "taken as both the text and the label"),  # 1.0000
])
def test_columns_that_would_be_read_wrong_are_refused(tmp_path, content, args, match):
    path = tmp_path / "d.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_dataset(path, **args)


def test_one_label_written_two_ways_is_refused_and_float_ids_are_numbers():
    """'Positive' / 'positive' trained a 4-class model that check reads as 2; '0.0' / '1.0' crashed finetune."""
    for labels in (["positive", "negative", "Positive"], ["1", "0", "1.0"]):
        with pytest.raises(DataError, match="one label written two ways"):
            label_names(labels)
    assert label_names(["1.0", "0.0", "10.0", "2.0"]) == ["0.0", "1.0", "2.0", "10.0"]


@pytest.mark.parametrize("header,row,first,second", [
    ("question\tsentence\tlabel", "what is it?\tit is a film.\t0", "what is it?", "it is a film."),  # QNLI
    ("question1\tquestion2\tlabel", "who is he?\twho is him?\t1", "who is he?", "who is him?"),    # QQP
    ("premise\thypothesis\tlabel", "a man runs.\tsomeone moves.\t0", "a man runs.", "someone moves."),
])
def test_sentence_pairs_are_read_as_pairs(tmp_path, header, row, first, second):
    """QNLI's columns were read as the sentences alone (the question dropped: 0.90 against 0.95), QQP's question2
    never became the second segment."""
    path = tmp_path / "pairs.tsv"
    path.write_text(f"{header}\n{row}\n")
    ds = load_dataset(path)
    assert (ds.texts, ds.pairs) == ([first], [second])


@pytest.mark.parametrize("trained_on_pairs,body,refused", [
    (True, "label\tsentence\npositive\tgood film\n", "was fine-tuned on pairs"),
    (False, "label\tsentence1\tsentence2\npositive\tgood film\tit was\n", "was fine-tuned on single sentences"),
    (None, "label\tsentence\npositive\tgood film\n", None),  # not fine-tuned by edgekit: nothing known or refused
    (True, "label\tsentence1\tsentence2\npositive\tgood film\tit was\n", None),
])
def test_check_reads_data_as_the_model_was_fine_tuned_pairs_or_not(tiny_model, tmp_path, trained_on_pairs, body,
                                                                    refused):
    """A model fine-tuned on sentence pairs was scored on single sentences without a word (0.90)."""
    from edgekit.artifact import Artifact
    from edgekit.check import labeled_data

    model = Artifact(tiny_model, "hf", tiny_model, {} if trained_on_pairs is None else {"pairs": trained_on_pairs})
    path = tmp_path / "rows.tsv"
    path.write_text(body)
    if refused:
        with pytest.raises(DataError, match=refused):
            labeled_data(model, path)
    else:
        assert len(labeled_data(model, path)[0]) == 1
