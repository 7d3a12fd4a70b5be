"""Jobs: the Train tab's engine side (configs, the fit check, progress) and the training process."""
import time

import pandas as pd
import pytest
import torch

from studio import checkpoints_dir, data, device_check, devices, jobs, memory, models, runs
from studio.devices import DeviceMemory
from studio.jobs import TrainingJob


def test_make_config_lays_the_tabs_values_over_the_models_defaults(tiny_char_checkpoint):
    cfg = jobs.make_config(tiny_char_checkpoint, "builtin", {"max_steps": 7, "learning_rate": 0.01}, device="cpu")
    defaults = jobs.default_settings(tiny_char_checkpoint)
    assert (cfg.settings.max_steps, cfg.settings.learning_rate) == (7, 0.01)
    assert cfg.settings.warmup_steps == defaults.warmup_steps and cfg.device == "cpu"
    assert cfg.name.startswith(f"{tiny_char_checkpoint}-20")  # no name given: model and date-time
    assert jobs.make_config(tiny_char_checkpoint, "builtin", {}, name=" mine ").name == "mine"
    with pytest.raises(ValueError, match="max_steps"):
        jobs.make_config(tiny_char_checkpoint, "builtin", {"max_steps": 0})


def test_plan_on_cpu_says_memory_data_and_whether_it_fits(tiny_char_checkpoint, chat_file, monkeypatch):
    cfg = jobs.make_config(tiny_char_checkpoint, chat_file, {"batch_size": 8, "grad_accum": 2}, device="cpu",
                           precision="fp32")
    config = models.model_config(models.resolve(tiny_char_checkpoint))
    expected = memory.estimate(config, 8, config.max_position_embeddings, "fp32", False, "cpu")
    p = jobs.plan(cfg)
    assert (p.device, p.params, p.estimate) == ("cpu", models.count_parameters(config), expected)
    assert p.data["docs"] == 200 and p.data["train_tokens"] > 0
    assert p.fits and p.fit is None
    # a device with room for a micro-batch of 4: the plan suggests what the run will do
    budget = memory.estimate(config, 4, config.max_position_embeddings, "fp32", False, "cpu").total + 1
    monkeypatch.setattr(devices, "memory", lambda device: DeviceMemory("cpu", budget, budget))
    tight = jobs.plan(cfg)
    assert not tight.fits and (tight.fit.micro_batch, tight.fit.grad_accum) == (2, 8)


def test_plan_estimates_for_the_chosen_device(tiny_char_checkpoint, chat_file, monkeypatch):
    """"Check fit" on CUDA: the estimate and the budget are the GPU's, as training's own fit is."""
    config = models.model_config(models.resolve(tiny_char_checkpoint))
    block = config.max_position_embeddings
    on_mps = memory.estimate(config, 8, block, "fp32", False, "mps").total
    on_cuda = memory.estimate(config, 8, block, "fp32", False, "cuda").total
    assert on_cuda < on_mps  # fused attention keeps no T x T scores; MPS's math kernel does
    free = (on_mps + on_cuda) // 2  # enough on the GPU, too little by MPS's estimate
    monkeypatch.setattr(devices, "pick_device", lambda name="auto": torch.device("cuda"))
    monkeypatch.setattr(devices, "memory", lambda device: DeviceMemory(str(device), 2 * free, free))
    monkeypatch.setattr(device_check, "checked", lambda device, prec: None)  # there is no GPU to run it on
    p = jobs.plan(jobs.make_config(tiny_char_checkpoint, chat_file, {"batch_size": 8}, device="cuda",
                                   precision="fp32"))
    assert p.device == "cuda" and p.available_bytes == free
    assert p.estimate.total == on_cuda and p.fits and p.fit is None


def write_run(name: str, status: str, max_steps: int) -> None:
    folder = runs.run_dir(name)
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.RUN_FILE, {"status": status, "settings": {"max_steps": max_steps}})


def test_run_progress_measures_seconds_per_step_and_the_eta():
    df = pd.DataFrame([{"type": "step", "step": s, "time": 1000 + s * 0.5} for s in (10, 20, 30)]
                      + [{"type": "eval", "step": 30, "val_loss": 2.0}])
    write_run("eta-running", "running", 100)  # a run started from the CLI: run.json is the truth
    p = jobs.run_progress(TrainingJob(), runs.run_dir("eta-running"), df)
    assert (p.run, p.state, p.step, p.max_steps) == ("eta-running", "running", 30, 100)
    assert p.seconds_per_step == pytest.approx(0.5) and p.eta_s == pytest.approx(35.0)
    assert p.fraction == pytest.approx(0.3)
    status = jobs.status_dict(TrainingJob(), runs.run_dir("eta-running"), df)
    assert status["eta_s"] == pytest.approx(35.0) and status["last_eval"] == {"step": 30, "val_loss": 2.0}
    # the second step row is enough for an ETA (the run showed none at step 18 of 2000)
    two = pd.DataFrame([{"type": "step", "step": 10, "time": 1037.0}, {"type": "step", "step": 20, "time": 1074.0}])
    p = jobs.run_progress(TrainingJob(), runs.run_dir("eta-running"), two)
    assert p.seconds_per_step == pytest.approx(3.7) and p.eta_s == pytest.approx(3.7 * 80)
    assert jobs.run_progress(TrainingJob(), runs.run_dir("eta-running"), two.iloc[:1]).eta_s is None
    write_run("eta-done", "done", 100)
    assert jobs.run_progress(TrainingJob(), runs.run_dir("eta-done"), df).eta_s is None  # nothing left to wait for


def wait_for(check, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s")


@pytest.mark.slow
def test_a_job_trains_in_its_own_process_and_stops_cleanly(tiny_char_checkpoint, chat_file):
    job = TrainingJob()
    cfg = jobs.make_config(tiny_char_checkpoint, chat_file, {"max_steps": 100_000, "batch_size": 2,
                                                             "eval_interval": 100_000}, name="job-run",
                           device="cpu")
    try:
        run_dir = jobs.start(job, cfg)
        assert job.status().state == "running"
        with pytest.raises(ValueError, match="already going"):
            job.start(cfg.to_dict(), runs.run_dir("job-run-2"))
        wait_for(lambda: any(r["type"] == "step" for r in runs.metric_rows(run_dir))
                 if (run_dir / runs.METRICS_FILE).is_file() else False)
        assert job.stop().state == "stopping"
        wait_for(lambda: not job.running())
    finally:
        job.close()
    assert job.status() == jobs.JobStatus(run_dir, "finished", 0)
    assert runs.read_run(run_dir)["status"] == "stopped"
    assert runs.metric_rows(run_dir)[-1]["reason"] == "stopped"
    assert jobs.run_progress(job, run_dir, runs.read_metrics(run_dir)).state == "stopped"
    with pytest.raises(ValueError, match="exists already"):
        jobs.start(job, cfg)


def test_the_hub_example_the_train_tab_suggests_is_a_name_the_data_module_takes():
    from studio.ui.common import HUB_EXAMPLE

    assert HUB_EXAMPLE in data.HUB
    with pytest.raises(ValueError, match="cannot be reached"):  # known, only offline here
        data.read_source(f"hub:{HUB_EXAMPLE}")


@pytest.mark.parametrize("user_value", [None, "ACTIVE"])
def test_the_job_runs_niced_with_the_users_thread_policy_not_the_apps(monkeypatch, user_value):
    import studio

    launched = {}

    class FakePopen:
        def __init__(self, cmd, env, **kw):
            launched.update(cmd=cmd, env=env)

        def poll(self):
            return 0

    monkeypatch.setattr(studio, "USER_THREAD_ENV", {} if user_value is None else {"OMP_WAIT_POLICY": user_value})
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what the app set for itself
    monkeypatch.setenv("GOMP_SPINCOUNT", studio.INTERACTIVE_SPIN)
    monkeypatch.setattr(jobs.subprocess, "Popen", FakePopen)
    jobs.TrainingJob().start({"model": "v1"}, checkpoints_dir() / f"niced-{user_value}")
    assert launched["env"].get("OMP_WAIT_POLICY") == user_value
    assert "GOMP_SPINCOUNT" not in launched["env"]  # the app's short spin would override the user's policy
    assert launched["cmd"][-2:] == ["--nice", str(jobs.TRAIN_NICE)]
