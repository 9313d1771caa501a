"""Healing: LoRA trained by self-distillation on the kept layers, merged, exported, reloaded."""

import json
from pathlib import Path

import pytest
import torch

from lmms_prune_plugin.core.heal import (
    HealOptions,
    heal_,
    loss_on,
    merge_,
    student_logits,
    teacher_logits,
    unload_,
)
from lmms_prune_plugin.core.planner import PruneOptions
from lmms_prune_plugin.core.training_data import collate
from lmms_prune_plugin.harnesses.lmms_eval.training import (
    heal_and_export,
    training_data_for,
    wrapper_tokenizer,
)
from lmms_prune_plugin.testing.tiny import save_tiny_vlm, wrapper_kwargs

TASKS = str(Path(__file__).parent / "tasks")
ARCH = "qwen2_vl"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_vlm(ARCH, tmp_path_factory.mktemp("ckpt") / "q", num_layers=4)


def load(ckpt, include_path=TASKS, **extra):
    from lmms_prune_plugin.harnesses.lmms_eval.pruned_vlm import PrunedVLM

    return PrunedVLM(pretrained=str(ckpt), budget=0, include_path=include_path,
                     plan_cache=False, **wrapper_kwargs(ARCH), **extra)  # fmt: skip


OPTS = dict(data=("prune_test_colours",), limit=8, rank=4, lr=1e-2, batch_size=8)


@pytest.fixture(scope="module")
def healed(ckpt):
    """The tiny model healed for 12 steps on all 8 colour prompts (one batch = all of them)."""
    lm = load(ckpt)
    plan = lm.planner.plan(PruneOptions(criterion="last", budget=2))
    opts = HealOptions(steps=12, **OPTS)
    data = training_data_for(lm, opts)
    before = {k: v.clone() for k, v in lm.hf_model.state_dict().items()}
    peft_model, result = heal_(lm.hf_model, wrapper_tokenizer(lm.base), plan, data, opts)
    return lm, plan, data, before, peft_model, result


def _base_name(name: str) -> str:
    return name.replace("base_model.model.", "").replace(".base_layer", "")


def test_distillation_lowers_the_loss_and_trains_only_adapters(healed):
    lm, plan, data, before, peft_model, result = healed
    pad = wrapper_tokenizer(lm.base).pad_token_id
    with torch.no_grad():
        after = loss_on(peft_model, plan.removed, data.examples, "distill", pad).item()
    assert result.losses[0] > 0  # the pruned model differs from its teacher
    assert after < 0.5 * result.losses[0]  # same batch: step 1 saw it with zero adapters
    changed, adapters = [], 0
    for name, value in peft_model.state_dict().items():
        if "lora_" in name:
            adapters += 1
            continue
        if not torch.equal(value, before[_base_name(name)]):
            changed.append(name)
    assert changed == [] and adapters > 0
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)
    # Adapters sit only on the kept layers: removed layers have none.
    for i in plan.removed:
        assert not any(f"layers.{i}." in n for n, _ in peft_model.named_parameters() if "lora" in n)


def test_teacher_is_the_unpruned_checkpoint(healed, ckpt):
    from transformers import AutoModelForImageTextToText

    lm, plan, data, _, peft_model, _ = healed
    inputs, _, _ = collate(data.examples[:3], wrapper_tokenizer(lm.base).pad_token_id)
    fresh = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        want = fresh(**inputs, use_cache=False).logits
        student = student_logits(peft_model, plan.removed, inputs)
    got = teacher_logits(peft_model, inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(student, want, atol=1e-3)  # the student really is another model


def test_same_seed_same_training(ckpt):
    lm = load(ckpt)
    plan = lm.planner.plan(PruneOptions(criterion="last", budget=1))
    runs = []
    for _ in range(2):
        opts = HealOptions(objective="sft", steps=3, **OPTS | {"batch_size": 4})
        data = training_data_for(lm, opts)
        pm, result = heal_(lm.hf_model, wrapper_tokenizer(lm.base), plan, data, opts)
        weights = {n: p.detach().clone() for n, p in pm.named_parameters() if "lora" in n}
        unload_(pm)
        runs.append((result.losses, weights))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].keys() == runs[1][1].keys()
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    # sft trains on the task's answers: the colour names, then the end of the turn.
    tok = wrapper_tokenizer(lm.base)
    assert tok.decode(data.examples[0].answer).startswith(data.examples[0].target)
    assert data.examples[0].target in {"red", "green", "blue", "yellow"}


def test_merged_export_reloads_as_the_healed_model(healed, tmp_path):
    from transformers import AutoModelForImageTextToText

    from lmms_prune_plugin.surgery.export import save_export

    lm, plan, data, _, peft_model, result = healed
    inputs, _, _ = collate(data.examples[:4], wrapper_tokenizer(lm.base).pad_token_id)
    with torch.no_grad():
        want = student_logits(peft_model, plan.removed, inputs)
    model = merge_(peft_model)
    plan.apply_(model, lm.identity)
    out = save_export(model, plan, tmp_path / "healed", lm.pretrained, healing=result.summary())
    again = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    assert again.config.text_config.num_hidden_layers == 2
    assert not any("lora" in k for k in again.state_dict())
    with torch.no_grad():
        got = again(**inputs, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    card = (out / "README.md").read_text()
    assert "## Healing" in card and "self-distillation" in card
    record = json.loads((out / "healing.json").read_text())
    assert record["options"]["steps"] == 12 and record["loss_first"] == result.losses[0]


def test_bad_input_fails_before_training(ckpt, tmp_path, capsys):
    from lmms_prune_plugin.tools.cli import main

    for bad, word in (({"steps": 0}, "steps=0"), ({"rank": 0}, "rank=0"),
                      ({"objective": "dpo"}, "objective='dpo'"), ({"lr": -1.0}, "lr=-1.0")):  # fmt: skip
        with pytest.raises(ValueError, match=word):
            HealOptions(**bad)
    with pytest.raises(ValueError, match="rank=65 .* hidden size is 64"):
        HealOptions(rank=65).check_hidden_size(64)

    existing = tmp_path / "out"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    margs = ",".join(f"{k}={v}" for k, v in ({"pretrained": ckpt} | wrapper_kwargs(ARCH)).items())
    assert main(["heal", "--model_args", margs, "--out", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["heal", "--model_args", margs, "--rank", "100", "--out", str(tmp_path / "n")]) == 2
    assert "rank=100" in capsys.readouterr().err
    assert (existing / "mine.txt").read_text() == "keep" and not (tmp_path / "n").exists()

    # A plan made for another checkpoint, and sft on a task without targets: refused, untouched.
    other = save_tiny_vlm(ARCH, tmp_path / "other", num_layers=4, seed=1)
    lm_other = load(other)
    foreign = lm_other.planner.plan(PruneOptions(criterion="last", budget=1))
    lm = load(ckpt, include_path=_notarget_task(tmp_path))
    before = {k: v.clone() for k, v in lm.hf_model.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit this model"):
        heal_and_export(lm, foreign, HealOptions(**OPTS), tmp_path / "x")
    own = lm.planner.plan(PruneOptions(criterion="last", budget=1))
    sft = HealOptions(objective="sft", **OPTS | {"data": ("prune_heal_notarget",)})
    with pytest.raises(ValueError, match="prune_heal_notarget.*no target.*sft"):
        heal_and_export(lm, own, sft, tmp_path / "y")
    after = lm.hf_model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _notarget_task(root: Path) -> str:
    """A task folder with one task whose documents have images but empty targets."""
    folder = root / "tasks"
    folder.mkdir()
    src = Path(TASKS) / "prune_test"
    (folder / "docs.jsonl").write_text((src / "docs.jsonl").read_text())
    no_target = "\n\ndef no_target(doc):\n    return ''\n"  # lmms-eval needs the key itself
    (folder / "utils.py").write_text((src / "utils.py").read_text() + no_target)
    (folder / "notarget.yaml").write_text(
        (src / "prune_test_colours.yaml")
        .read_text()
        .replace("task: prune_test_colours", "task: prune_heal_notarget")
        .replace("doc_to_target: answer", "doc_to_target: !function utils.no_target")
    )
    return str(folder)


def test_training_documents_are_never_benchmark_documents():
    from lmms_prune_plugin.demo import TASKS_DIR
    from lmms_prune_plugin.demo.build_tasks import main
    from lmms_prune_plugin.demo.data.train_task import TRAIN_FILE

    assert main(["--check"]) == 0  # the shipped files are what the generators write

    def contents(path: Path) -> list[dict]:
        return [
            {k: v for k, v in json.loads(line).items() if k != "id"}
            for line in path.read_text().splitlines()
        ]

    train = contents(TRAIN_FILE)
    assert len(train) == 2048 and {d["domain"] for d in train} == {"math", "nonmath"}
    train_docs = {json.dumps(d, sort_keys=True) for d in train}
    train_images = {d["image"] for d in train}
    held_out = [p for p in Path(TASKS_DIR).glob("prune_*/*.jsonl") if p != TRAIN_FILE]
    assert {p.stem for p in held_out} >= {"prune_demo_math", "prune_demo_nonmath",
                                          "prune_calib_math", "prune_calib_nonmath"}  # fmt: skip
    for path in held_out:
        docs = contents(path)
        assert not train_docs & {json.dumps(d, sort_keys=True) for d in docs}, path.name
        assert not train_images & {d["image"] for d in docs}, path.name
        # easy-vqa images: the training stream draws only from easy-vqa's train split.
        assert all('"split": "train"' not in d["image"] for d in docs), path.name


def test_sweep_heal_puts_healed_rows_next_to_unhealed(ckpt, tmp_path):
    from lmms_eval.tasks import TaskManager

    from lmms_prune_plugin.tools.sweep import plan_cells, read_rows, run_sweep

    lm = load(ckpt, batch_size=4)  # training data is still built one prompt per call
    before = {k: v.clone() for k, v in lm.hf_model.state_dict().items()}
    tm = TaskManager(include_path=[TASKS], include_defaults=False)
    out = tmp_path / "sweep.jsonl"
    opts = HealOptions(steps=2, **OPTS)
    run_sweep(lm, plan_cells(["last"], [None], [0, 1]), ["prune_test_colours"], tm, out, heal=opts)
    rows = read_rows(out)
    assert [(r["criterion"], r["budget"]) for r in rows] == [
        ("none", 0), ("last", 1), ("last+heal", 1)
    ]  # fmt: skip
    assert rows[2]["healing"]["options"]["steps"] == 2 and "healing" not in rows[1]
    after = lm.hf_model.state_dict()  # the adapters are gone again: weights as loaded
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert lm.base.batch_size == 4
