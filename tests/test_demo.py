"""The packaged demo model, its item generators and its lmms-eval tasks (offline, CPU)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lmms_prune_plugin.demo.build_tasks import task_files, to_jsonl  # noqa: E402
from lmms_prune_plugin.demo.data import (  # noqa: E402
    HEIGHT,
    HELD_OUT,
    MATH_KINDS,
    NONMATH_KINDS,
    TRAIN_SEED,
    WIDTH,
    held_out_docs,
    math_items,
    nonmath_items,
    normalize_answer,
    render_doc,
    shuffled_docs,
)
from lmms_prune_plugin.demo.model import (  # noqa: E402
    DEMO_MODEL_DIR,
    TASKS_DIR,
    DemoModelError,
    check_demo_model,
    demo_model_args,
)

ROOT = Path(__file__).resolve().parent.parent


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- generators
def test_generators_are_deterministic_down_to_the_pixels():
    for make in (lambda: math_items(7, 12), lambda: nonmath_items(7, 12, "test")):
        first, second = make(), make()
        assert first == second
        assert [_png(render_doc(d)) for d in first] == [_png(render_doc(d)) for d in second]


def test_every_image_is_the_fixed_canvas():
    docs = math_items(3, 8) + nonmath_items(3, 12, "test")
    assert {render_doc(d).size for d in docs} == {(WIDTH, HEIGHT)}
    assert WIDTH % 28 == 0 and HEIGHT % 28 == 0  # one merged Qwen2-VL token per 28x28 cell


def test_kinds_cover_both_domains_and_answers_are_short():
    docs = held_out_docs("prune_demo_math") + held_out_docs("prune_demo_nonmath")
    assert {d["kind"] for d in docs} == set(MATH_KINDS) | set(NONMATH_KINDS)
    for d in docs:
        assert d["answer"] and " " not in d["answer"]
        if d["domain"] == "math":
            assert d["answer"].isdigit()


def test_held_out_seeds_and_images_differ_from_training():
    seeds = [s.seed for s in HELD_OUT.values()]
    assert len(set(seeds)) == len(seeds) and TRAIN_SEED not in seeds
    demo = held_out_docs("prune_demo_nonmath")
    calib = held_out_docs("prune_calib_nonmath")
    evqa = [json.loads(d["image"]) for d in demo + calib if d["kind"].startswith("easyvqa")]
    assert evqa and {s["split"] for s in evqa} == {"test"}  # training uses easy-vqa's train split
    demo_ids = {json.loads(d["image"]).get("image_id") for d in demo} - {None}
    calib_ids = {json.loads(d["image"]).get("image_id") for d in calib} - {None}
    assert not demo_ids & calib_ids
    renders = {d["image"] for d in held_out_docs("prune_demo_math")}
    assert not renders & {d["image"] for d in math_items(TRAIN_SEED, 400)}


def test_shuffled_control_moves_every_image_and_keeps_questions():
    docs = held_out_docs("prune_demo_math")[:20]
    moved = shuffled_docs(docs)
    assert [d["question"] for d in moved] == [d["question"] for d in docs]
    assert all(m["image"] != d["image"] for m, d in zip(moved, docs, strict=True))
    assert sorted(m["image"] for m in moved) == sorted(d["image"] for d in docs)


def test_answer_normalisation():
    assert normalize_answer("  Red. ") == "red"
    assert normalize_answer("12") == "12"


def test_shipped_jsonl_files_are_current():
    for path, docs in task_files().items():
        assert path.read_text(encoding="utf-8") == to_jsonl(docs), f"regenerate {path.name}"


# --------------------------------------------------------------------------- tasks
def test_tasks_load_through_lmms_eval_and_yield_images():
    from lmms_eval.tasks import TaskManager, get_task_dict

    names = ["prune_demo_math", "prune_demo_nonmath", "prune_calib_math", "prune_calib_nonmath"]
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert {"prune_demo", "prune_calib", "prune_demo_shuffled"} <= set(manager.all_groups)
    simple = get_task_dict(names, manager, "simple")
    chat = get_task_dict(names, manager, "chat")
    for name in names:
        task = simple[name]
        docs = task.test_docs()
        assert len(docs) == HELD_OUT[name].size
        doc = docs[0]
        (image,) = task.doc_to_visual(doc)
        assert image.size == (WIDTH, HEIGHT)
        assert doc["question"] in task.doc_to_text(doc)
        assert task.config.generation_kwargs["do_sample"] is False
        # Chat wrappers get the same image, then the same text, through auto-built messages.
        (turn,) = chat[name].doc_to_messages(doc)
        assert [c["type"] for c in turn["content"]] == ["image", "text"]
        assert turn["content"][1]["text"] == task.doc_to_text(doc)


def test_tasks_never_reach_the_network(monkeypatch):
    """Loading every demo and calibration task and rendering images opens no connection."""
    import socket

    from lmms_eval.tasks import TaskManager, get_task_dict

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    tasks = get_task_dict(list(HELD_OUT), manager, "simple")
    for name, task in tasks.items():
        docs = task.test_docs()
        assert len(docs) == HELD_OUT[name].size
        for doc in docs.select(range(12)):
            (image,) = task.doc_to_visual(doc)
            assert image.size == (WIDTH, HEIGHT)
    assert attempts == []


# --------------------------------------------------------------------------- demo model
@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    """``train_demo.py --smoke``: a few steps on a tiny config, end to end, in a subprocess."""
    out = tmp_path_factory.mktemp("smoke") / "demo_vlm"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_train_demo_smoke_runs_end_to_end(smoke_model):
    assert check_demo_model(smoke_model) == smoke_model
    report = json.loads((smoke_model / "training_report.json").read_text())
    assert set(report["held_out_greedy_exact_match"]["math"]) == {*MATH_KINDS, "all"}


@pytest.mark.slow
def test_train_demo_is_reproducible(smoke_model, tmp_path):
    """A second smoke run from the same seed writes bit-identical weights and tokenizer."""
    out = tmp_path / "again"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (out / name).read_bytes() == (smoke_model / name).read_bytes(), name


@pytest.fixture
def model_copy(smoke_model, tmp_path):
    dst = tmp_path / "demo_vlm"
    shutil.copytree(smoke_model, dst)
    return dst


def test_check_demo_model_reports_missing_weights(model_copy):
    for f in model_copy.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(DemoModelError, match="safetensors.*scripts/train_demo.py"):
        check_demo_model(model_copy)


def test_check_demo_model_reports_truncated_weights(model_copy):
    weights = next(model_copy.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(DemoModelError, match=f"{weights.name} is truncated.*train_demo.py"):
        check_demo_model(model_copy)


def test_check_demo_model_reports_missing_config(model_copy):
    (model_copy / "processor_config.json").unlink()
    with pytest.raises(DemoModelError, match="processor_config.json"):
        check_demo_model(model_copy)


def test_packaged_demo_model_is_complete_and_small():
    assert check_demo_model() == DEMO_MODEL_DIR
    total = sum(f.stat().st_size for f in DEMO_MODEL_DIR.glob("*.safetensors"))
    assert total <= 25 * 1024 * 1024
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert config["text_config"]["num_hidden_layers"] >= 12


@pytest.mark.slow
def test_packaged_demo_model_beats_chance_through_lmms_eval():
    """32 docs of each demo task through lmms-eval's own qwen2_vl wrapper, greedy, offline."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    model = get_model("qwen2_vl")(
        pretrained=str(DEMO_MODEL_DIR), batch_size=16, **demo_model_args()
    )
    tasks = ["prune_demo_math", "prune_demo_nonmath"]
    results = simple_evaluate(
        model=model,
        tasks=tasks + [f"{t}_shuffled" for t in tasks],
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        limit=32,
    )["results"]
    acc = {t: r["exact_match,none"] for t, r in results.items() if "exact_match,none" in r}
    # Chance is far lower: math answers range over 0..81 (a constant guess per kind scores
    # about 0.15), non-math questions have 2-8 possible answers (about 0.35 overall).
    assert acc["prune_demo_math"] >= 0.7
    assert acc["prune_demo_nonmath"] >= 0.75
    # The same questions with another document's image: the answers come from the image.
    assert acc["prune_demo_math_shuffled"] <= acc["prune_demo_math"] - 0.4
    assert acc["prune_demo_nonmath_shuffled"] <= acc["prune_demo_nonmath"] - 0.3


def test_check_demo_model_reports_missing_folder(tmp_path):
    with pytest.raises(DemoModelError, match="does not exist"):
        check_demo_model(tmp_path / "nowhere")


def test_pruned_vlm_without_pretrained_names_the_missing_demo_model(monkeypatch, tmp_path):
    import lmms_prune_plugin.demo.model as demo

    monkeypatch.setattr(demo, "DEMO_MODEL_DIR", tmp_path / "missing")
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    with pytest.raises(DemoModelError, match="does not exist.*scripts/train_demo.py"):
        PrunedVLM(criterion="math", budget=2)
