"""Train: config and presets, bad input, a real 4-step LoRA run on a tiny Llama, kill -9 and resume."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from core import jobs, runs, versions
from core.errors import IrisError
from core.train import lora
from core.train.__main__ import cli as train_cli
from core.train.config import TrainConfig, list_presets, load_preset


def toy_version(name: str = "toy", rows: int = 24, eval_rows: int = 4) -> str:
    recs = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}], "origin": "toy"}
            for i in range(rows + eval_rows)]
    df = pd.DataFrame(recs)
    versions.save(name, df.iloc[:rows].reset_index(drop=True),
                  eval_df=df.iloc[rows:].reset_index(drop=True) if eval_rows else None)
    return name


def tiny_cfg(model_dir: Path, **kw) -> TrainConfig:
    base = dict(base_model=str(model_dir), dataset="toy", run_name="tiny", max_steps=4, save_steps=2,
                eval_steps=2, batch_size=2, grad_accum=1, max_seq_length=64, lora_r=4, lora_alpha=8,
                target_modules=["q_proj", "v_proj"], warmup_steps=0, learning_rate=1e-3, seed=1)
    return TrainConfig(**{**base, **kw})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_presets_load_with_the_labs_settings():
    presets = list_presets()
    assert set(presets) == {"Lab 2: Llama-3.2-1B on FineTome", "CPU quick: SmolLM2-135M", "CPU quick DPO: SmolLM2-135M",
                            "Lab 2 + DPO: Llama-3.2-1B"}
    lab = load_preset("Lab 2: Llama-3.2-1B on FineTome")
    assert (lab.lora_r, lab.max_seq_length, lab.batch_size, lab.grad_accum, lab.learning_rate, lab.warmup_steps,
            lab.max_steps, lab.save_steps) == (16, 2048, 2, 4, 2e-4, 5, 100, 10)
    assert lab.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    quick = load_preset("cpu_quick_smollm2")
    assert quick.base_model == "smollm2-135m-instruct" and quick.optimizer == "adamw_torch"
    from core.config import from_yaml, to_yaml

    assert from_yaml(TrainConfig, to_yaml(lab)) == lab


@pytest.mark.parametrize("field,value,words", [
    ("batch_size", 0, "batch size × gradient accumulation"), ("grad_accum", 0, "at least 1"),
    ("learning_rate", 5.0, "out of range"), ("backend", "jax", "not one of"), ("dataset", "../x", "not usable"),
    ("max_steps", -1, "at least 0"), ("target_modules", [], "at least one"),
])
def test_bad_config_values_are_refused(field, value, words):
    with pytest.raises(IrisError, match=words.replace("×", ".")):
        TrainConfig(**{"base_model": "m", "dataset": "d", field: value})


def test_preflight_refuses_what_cannot_work(tiny_llama3_dir, monkeypatch):
    with pytest.raises(IrisError, match="does not exist"):
        lora.preflight(tiny_cfg(tiny_llama3_dir, dataset="gone"))
    toy_version()
    with pytest.raises(IrisError, match="beyond"):  # the tiny model has 2048 positions
        lora.preflight(tiny_cfg(tiny_llama3_dir, max_seq_length=4096))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IrisError, match="not available offline: the Hugging Face hub is not reachable"):
        lora.preflight(tiny_cfg(tiny_llama3_dir, base_model="nobody/no-such-model-xyz"))
    monkeypatch.setattr(lora, "free_disk_bytes", lambda path: 1000)
    with pytest.raises(IrisError, match="free"):
        lora.preflight(tiny_cfg(tiny_llama3_dir))
    with pytest.raises(IrisError, match="CUDA"):  # no GPU on the CI machine
        lora.preflight(tiny_cfg(tiny_llama3_dir, optimizer="adamw_8bit"))


def test_cli_with_a_bad_config_writes_nothing(tmp_path, iris_home, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("base_model: m\ndataset: missing\nbatch_size: 2\nlearning_rat: 1\n")
    with pytest.raises(SystemExit) as exit_:
        train_cli([str(cfg)])
    assert exit_.value.code == 2 and "learning_rat" in capsys.readouterr().err
    cfg.write_text("base_model: m\ndataset: missing\nrun_name: r1\n")
    with pytest.raises(SystemExit):
        train_cli([str(cfg)])
    assert "does not exist" in capsys.readouterr().err
    assert list((iris_home / "runs").iterdir()) == []


def test_four_steps_train_the_adapter_and_not_the_base(tiny_llama3_dir):
    from safetensors.torch import load_file

    toy_version()
    base_hash = sha(tiny_llama3_dir / "model.safetensors")
    run_dir = lora.main(tiny_cfg(tiny_llama3_dir))

    assert runs.list_checkpoints(run_dir) == [2, 4]
    assert jobs.read_status(run_dir)["state"] == "completed" and jobs.read_status(run_dir)["step"] == 4
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "status.json", "metrics.jsonl", "checkpoints",
                                                  "adapter"}
    assert lora.load_config(run_dir) == tiny_cfg(tiny_llama3_dir)
    metrics = runs.read_metrics(run_dir)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert [m["step"] for m in metrics if "eval_loss" in m] == [2, 4]
    assert all(m["tokens_per_s"] > 0 and m["lr"] is not None and m["grad_norm"] is not None
               for m in metrics if "loss" in m)
    # LoRA B starts at zero: any non-zero B, and A moving between checkpoints, means the adapter trained.
    final = load_file(runs.adapter_dir(run_dir) / "adapter_model.safetensors")
    early = load_file(runs.adapter_dir(run_dir, 2) / "adapter_model.safetensors")
    assert final and all("lora_" in k for k in final)  # only adapter weights are saved
    assert any(v.abs().sum() > 0 for k, v in final.items() if "lora_B" in k)
    assert any(not (final[k] == early[k]).all() for k in final)
    assert sha(tiny_llama3_dir / "model.safetensors") == base_hash
    card = (run_dir / "adapter" / "README.md").read_text()
    assert str(tiny_llama3_dir) in card and "`toy`" in card
    template = (run_dir / "adapter" / "chat_template.jinja").read_text()
    assert "<|start_header_id|>" in template and "{% generation %}" not in template  # plain Jinja for inference
    with pytest.raises(IrisError, match="no complete checkpoint-3"):
        runs.adapter_dir(run_dir, 3)


def test_assistant_only_loss_masks_the_prompt(tiny_llama3_dir):
    from transformers import AutoTokenizer

    from core.train.backends import set_training_template

    tok = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    assert set_training_template(tok, True) == "llama-3"
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == "Hello there<|eot_id|>"
    assert tok.decode(out["input_ids"]).count("<|begin_of_text|>") == 1


def wait_for(pred, timeout: float = 240, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_then_resume_continues_to_the_end(tiny_llama3_dir):
    toy_version(rows=40)
    run_dir = lora.start(tiny_cfg(tiny_llama3_dir, max_steps=8, save_steps=2, eval_steps=0, run_name="killed"))
    wait_for(lambda: len(runs.list_checkpoints(run_dir)) >= 1 and (jobs.read_status(run_dir).get("step") or 0) >= 3
             or jobs.read_status(run_dir).get("state") in jobs.FINAL, what="step 3")
    jobs.kill(run_dir)  # SIGKILL to the job's process group
    status = jobs.read_status(run_dir)
    assert status["state"] == "stopped" and status["step"] < 8, status
    last = runs.list_checkpoints(run_dir)[-1]
    # A checkpoint torn by a kill during save: no COMPLETE marker, so never taken as the latest.
    torn = run_dir / "checkpoints" / "checkpoint-7"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"partial")
    assert runs.list_checkpoints(run_dir)[-1] == last

    lora.resume(run_dir)
    status = jobs.wait(run_dir, timeout_s=300)
    assert status["state"] == "completed", jobs.tail(run_dir / "train.log")
    state = json.loads((run_dir / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and status["resumed_from"] == f"checkpoint-{last}"
    assert [m["step"] for m in runs.read_metrics(run_dir) if "loss" in m] == list(range(1, 9))
    assert runs.list_checkpoints(run_dir)[-1] == 8 and (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_resume_from_a_mirror_on_a_fresh_workspace(tiny_llama3_dir, tmp_path):
    toy_version()
    mirror = tmp_path / "drive"
    run_dir = lora.main(tiny_cfg(tiny_llama3_dir, max_steps=2, save_steps=1, eval_steps=0,
                                  mirror_dir=str(mirror), run_name="mirrored"))
    assert sorted(p.name for p in (mirror / "mirrored" / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    shutil.rmtree(run_dir)  # the machine died with its disk
    lora.resume_run(mirror / "mirrored", checkpoint=1)
    assert jobs.read_status(run_dir)["state"] == "completed" and runs.list_checkpoints(run_dir) == [1, 2]
    assert [m["step"] for m in runs.read_metrics(run_dir) if "loss" in m] == [1, 2]


def test_estimate_counts_eval_passes(tiny_llama3_dir):
    from core.train.estimate import estimate

    toy_version(rows=24, eval_rows=200)
    with_eval = estimate(tiny_cfg(tiny_llama3_dir, max_steps=30, eval_steps=10))
    without = estimate(tiny_cfg(tiny_llama3_dir, max_steps=30, eval_steps=0))
    assert with_eval.eval_passes == 3 and without.eval_passes == 0
    assert with_eval.seconds == pytest.approx(without.seconds + with_eval.eval_seconds) and with_eval.eval_seconds > 0
    assert "3 eval passes" in with_eval.summary()


def test_the_estimate_counts_a_dpo_pair_as_two_sequences_and_a_reference_pass(tiny_llama3_dir):
    from core.train.estimate import estimate

    toy_version(rows=24)
    sft = estimate(tiny_cfg(tiny_llama3_dir, max_steps=30, eval_steps=0))
    dpo = estimate(tiny_cfg(tiny_llama3_dir, max_steps=30, eval_steps=0, method="dpo"))
    assert dpo.tokens_per_step == 2 * sft.tokens_per_step
    def training_s(e):  # the start-up phases before step 1 do not depend on the method
        return e.seconds - sum(e.parts["startup_s"].values())

    assert training_s(dpo) == pytest.approx(training_s(sft) * 2 * 4 / 3, rel=0.01)  # CPU: FLOPs over a fixed rate
    assert dpo.parts["activations"] == 2 * sft.parts["activations"]


def _callback(run_dir: Path, **args):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from core.train.callbacks import IrisCallback

    run_dir.mkdir(parents=True, exist_ok=True)
    jobs.update_status(run_dir, state="running", pid=os.getpid())  # this process plays the job
    targs = TrainingArguments(output_dir=str(run_dir / "checkpoints"), report_to=[], **args)
    return IrisCallback(run_dir, TrainConfig(base_model="m", dataset="d")), targs, TrainerState(), TrainerControl()


def test_eval_pass_shows_progress_and_a_stop_during_it_saves_right_after(tmp_path):
    cb, args, state, control = _callback(tmp_path / "run", eval_strategy="steps", eval_steps=2)
    batches = [0, 1, 2]  # the eval dataloader: only its length is read
    state.global_step, state.max_steps = 2, 6
    cb.on_train_begin(args, state, control)
    cb.on_prediction_step(args, state, control, eval_dataloader=batches)
    cb.on_prediction_step(args, state, control, eval_dataloader=batches)
    assert jobs.read_status(cb.run_dir)["message"] == "evaluating (2/3 batches)"
    jobs.request_stop(cb.run_dir)
    cb.on_prediction_step(args, state, control, eval_dataloader=batches)
    status = jobs.read_status(cb.run_dir)
    assert status["state"] == "stopping" and "finishing this eval pass first (3/3 batches)" in status["message"]
    control = cb.on_evaluate(args, state, control)
    assert control.should_save and control.should_training_stop  # saved after the pass, not a step later
    assert len(cb.eval_seconds) == 1


def test_eta_includes_the_eval_passes_still_to_come(tmp_path):
    cb, args, state, control = _callback(tmp_path / "run", eval_strategy="steps", eval_steps=2)
    state.max_steps = 6
    cb.on_train_begin(args, state, control)
    cb.t0 -= 40.0  # 40 s since the start, of which one 30-s eval pass: 10 s for 2 training steps
    cb.eval_seconds = [30.0]
    state.global_step = 2
    cb.on_step_end(args, state, control)
    # 4 steps left at 5 s + the passes at steps 4 and 6 at 30 s
    assert jobs.read_status(cb.run_dir)["eta_s"] == pytest.approx(20 + 60, abs=1)


def test_resuming_removes_checkpoints_past_the_resume_point(tmp_path):
    from core.train.callbacks import COMPLETE

    cb, args, state, control = _callback(tmp_path / "run")
    for step in (5, 10, 11):
        ckpt = cb.run_dir / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / COMPLETE).write_text("{}")
    state.global_step = 10  # the Trainer has loaded checkpoint-10's state
    cb.on_train_begin(args, state, control)
    assert runs.list_checkpoints(cb.run_dir) == [5, 10]
