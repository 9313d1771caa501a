"""The demo sets as VLMEvalKit TSVs: options VLMEvalKit's exact matching can score, files that
are never replaced, and VLMEvalKit reading them as the datasets they are meant to be."""

import base64
import io
import string

import pytest
from PIL import Image

from lmms_prune_plugin.harnesses.vlmeval_data import (
    DEMO_SETS,
    choose_options,
    demo_tsv,
    read_docs,
    write_demo_tsvs,
)


def test_options_hold_the_answer_and_no_option_contains_another():
    pool = ["0", "1", "10", "11", "13", "2", "28", "4", "7"]
    for i in range(40):
        options = choose_options(f"doc-{i}", "1", pool)
        assert "1" in options and 2 <= len(options) <= 4
        assert len(set(options)) == len(options)
        for a in options:
            assert not any(a != b and (a in b or b in a) for b in options), options
    assert choose_options("doc-3", "1", pool) == choose_options("doc-3", "1", reversed(pool))
    # The answer's place follows the document: not always the same letter.
    assert len({choose_options(f"doc-{i}", "1", pool).index("1") for i in range(40)}) > 1


def test_an_answer_without_distractors_is_an_error():
    with pytest.raises(ValueError, match="no distractor"):
        choose_options("doc", "yes", ["yes"])


@pytest.mark.parametrize("demo", [d for d in DEMO_SETS if d.mcq], ids=lambda d: d.name)
def test_exact_matching_finds_the_right_letter_for_every_true_answer(demo):
    from vlmeval.utils.matching_util import can_infer

    _, rows = demo_tsv(demo)
    docs = read_docs(demo.source)
    for row, doc in zip(rows, docs, strict=True):
        choices = {k: row[k] for k in string.ascii_uppercase[:4] if row[k]}
        assert row[row["answer"]] == str(doc["answer"])
        assert can_infer(str(doc["answer"]), dict(choices)) == row["answer"], row["id"]
        wrong = next(v for k, v in choices.items() if k != row["answer"])
        assert can_infer(wrong, dict(choices)) != row["answer"]


def test_vlmeval_reads_the_tsvs_as_mcq_and_vqa_sets_with_the_rendered_pixels(lmu_data):
    from vlmeval.dataset import build_dataset

    from lmms_prune_plugin.demo.data.task_utils import doc_to_visual

    math = build_dataset("PruneDemo_Math")
    calib = build_dataset("PruneCalib_Nonmath")
    assert type(math).__name__ == "CustomMCQDataset" and math.TYPE == "MCQ"
    assert type(calib).__name__ == "CustomVQADataset"
    docs = read_docs("prune_calib/prune_calib_nonmath.jsonl")
    assert len(calib.data) == len(docs)
    line = calib.data.iloc[3]
    (path,) = calib.dump_image(line)
    with Image.open(path) as dumped:
        assert dumped.convert("RGB").tobytes() == doc_to_visual(docs[3])[0].convert("RGB").tobytes()
    assert (
        str(math.data.iloc[0]["category"])
        == read_docs("prune_demo/prune_demo_math.jsonl")[0]["kind"]
    )


def test_same_files_are_kept_other_files_are_never_replaced(tmp_path):
    (first,) = write_demo_tsvs(tmp_path, ["PruneCalib_Math"])
    stamp = first.stat().st_mtime_ns
    assert write_demo_tsvs(tmp_path, ["PruneCalib_Math"]) == [first]
    assert first.stat().st_mtime_ns == stamp
    other = tmp_path / "PruneDemo_Math.tsv"
    other.write_text("index\tquestion\n0\tmine\n")
    with pytest.raises(ValueError, match="other content"):
        write_demo_tsvs(tmp_path)
    assert other.read_text() == "index\tquestion\n0\tmine\n"
    assert not (tmp_path / "PruneDemo_Nonmath.tsv").exists()  # checked before writing any


def test_an_image_vlmeval_dumped_earlier_with_other_pixels_is_named(tmp_path):
    folder = tmp_path / "images" / "PruneCalib_Math"
    folder.mkdir(parents=True)
    Image.new("RGB", (112, 112), "white").save(folder / "0.png")
    with pytest.raises(ValueError, match=r"0\.png shows other pixels"):
        write_demo_tsvs(tmp_path, ["PruneCalib_Math"])
    _, rows = demo_tsv(DEMO_SETS[2])
    Image.open(io.BytesIO(base64.b64decode(rows[0]["image"]))).save(folder / "0.png")
    assert write_demo_tsvs(tmp_path, ["PruneCalib_Math"])


def test_unknown_set_and_file_as_folder_are_errors(tmp_path):
    with pytest.raises(ValueError, match="'Nope' is not a demo set"):
        write_demo_tsvs(tmp_path, ["Nope"])
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        write_demo_tsvs(tmp_path / "f")
