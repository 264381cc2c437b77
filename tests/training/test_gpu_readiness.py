"""CUDA-path logic checked on CPU: the device per LOCAL_RANK, the DDP schedule, D frozen in the G step, no host
sync per step, the SSIM window cache, the uint8 batch path and the pipeline's weight pre-flight."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from m2u.training import ssim as ssim_module
from m2u.training.config import MSegTrainConfig
from m2u.training.data import ShardDataSource, TensorDataSource
from m2u.training.device import resolve_device
from m2u.training.models import MSegConfig

sys.path.insert(0, str(Path(__file__).parent))
import training_ddp_worker

from m2u.training.distributed import DistributedContext, bind_device, ddp_device_ids, milestone_steps
from m2u.training.gan_task import GanTask
from m2u.training.guards import FiniteGuard, NonFiniteLossError, RunningMeans
from m2u.training.mseg_task import MSegTask
from m2u.training.rng import seed_everything
from m2u.training.trainer import train_mseg

TINY_MSEG = MSegConfig(base_channels=4, levels=3)
QUIET = {"progress": False, "val_every": 0, "num_workers": 0, "evaluate_test": False}


# ------------------------------------------------------------------------------------------ device per rank
@pytest.fixture
def fake_gpus(monkeypatch):
    """Four pretend GPUs, the current one 2; no torchrun variables."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_cuda_without_index_is_the_current_gpu_and_auto_picks_cuda(fake_gpus):
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda:3") == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="only 4 CUDA"):
        resolve_device("cuda:7")


def test_under_torchrun_every_rank_takes_its_local_rank(fake_gpus):
    fake_gpus.setenv("WORLD_SIZE", "2")
    fake_gpus.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    with pytest.warns(UserWarning, match="rank 1 uses cuda:1"):
        assert resolve_device("cuda:0") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_no_cuda_is_a_clear_error_and_auto_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_set_device_only_for_an_indexed_gpu_and_ddp_gets_that_index(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    bind_device(torch.device("cpu"))
    bind_device(torch.device("cuda"))  # no index: nothing to bind (this crashed before)
    bind_device(torch.device("cuda", 1))
    assert calls == [torch.device("cuda", 1)]
    assert ddp_device_ids(torch.device("cuda", 3)) == [3]
    assert ddp_device_ids(torch.device("cpu")) is None
    with pytest.raises(ValueError, match="indexed"):
        ddp_device_ids(torch.device("cuda"))


# ------------------------------------------------------------------------------------------ DDP schedule
def test_milestones_follow_samples_seen_on_any_number_of_ranks():
    paper = (50_000, 75_000, 90_000)
    assert milestone_steps(paper, 1) == list(paper)
    assert milestone_steps(paper, 2) == [25_000, 37_500, 45_000]
    for world in (2, 3, 8):
        for milestone, step in zip(paper, milestone_steps(paper, world)):
            # The first step whose samples seen (step x world x batch) reach the paper's milestone x batch.
            assert step * world >= milestone > (step - 1) * world
    with pytest.raises(ValueError):
        milestone_steps(paper, 0)


def test_one_process_keeps_the_configured_milestones():
    task = MSegTask(MSegTrainConfig(model=TINY_MSEG), torch.device("cpu"), DistributedContext())
    assert sorted(task.schedulers["mseg"].milestones) == [50_000, 75_000, 90_000]


# ------------------------------------------------------------------------------------------ D frozen in the G step
@pytest.mark.filterwarnings("ignore:Seems like .optimizer.step")
def test_generator_step_neither_computes_nor_keeps_discriminator_gradients(tmp_path):
    seed_everything(0)
    config = training_ddp_worker.tiny_gan_config(tmp_path)
    task = GanTask(config, torch.device("cpu"), DistributedContext())
    discriminator = task.networks["discriminator"]
    at_d_step = {}
    d_optimizer = task.optimizers["discriminator"]
    original_step = d_optimizer.step

    def recording_step(*args, **kwargs):
        at_d_step.update({n: p.grad.clone() for n, p in discriminator.named_parameters()})
        return original_step(*args, **kwargs)

    d_optimizer.step = recording_step
    batch = training_ddp_worker.tensors(2)
    metrics = task.train_step(batch, 0)
    assert at_d_step, "the discriminator step ran"
    for name, parameter in discriminator.named_parameters():
        assert parameter.requires_grad, name  # unfrozen again for the next D step
        assert torch.equal(parameter.grad, at_d_step[name]), f"the G step touched D's gradient {name}"
    assert all(p.grad is not None for p in task.networks["generator"].parameters() if p.requires_grad)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())  # no host floats


# ------------------------------------------------------------------------------------------ host syncs
def test_finite_guard_records_on_the_device_and_raises_at_check():
    guard = FiniteGuard("gan")
    guard.watch(0, {"d_loss": torch.tensor(1.0), "g_loss": torch.tensor(2.0)})
    guard.check(DistributedContext())  # all finite: nothing
    guard.watch(1, {"d_loss": torch.tensor(1.0), "g_loss": torch.tensor(float("nan"))})
    guard.watch(2, {"d_loss": torch.tensor(float("inf")), "g_loss": torch.tensor(float("nan"))})
    with pytest.raises(NonFiniteLossError, match=r"step 2 of the gan run: g_loss$"):
        guard.check(DistributedContext())


def test_running_means_average_between_log_lines():
    running = RunningMeans()
    for value in (1.0, 2.0, 6.0):
        running.add({"loss": torch.tensor(value), "bce": torch.tensor(2 * value)})
    assert running.means() == pytest.approx({"loss": 3.0, "bce": 6.0})
    assert running.means() == {}


class _Poisoned:
    def __init__(self, poison_at: int, count: int = 8) -> None:
        self.poison_at, self.count = poison_at, count
        self.tensors = training_ddp_worker.tensors(2)

    def batches(self, split, epoch):
        for index in range(self.count if split == "train" else 1):
            batch = {name: value.clone() for name, value in self.tensors.items()}
            if split == "train" and index >= self.poison_at:
                batch["masked"][:] = float("nan")
            yield batch


def test_finiteness_is_synced_once_per_log_interval_and_a_nan_still_stops(tmp_path, monkeypatch):
    checks = []
    original = FiniteGuard.check
    monkeypatch.setattr(FiniteGuard, "check", lambda self, dist: (checks.append(1), original(self, dist))[1])
    config = MSegTrainConfig(out=str(tmp_path / "ok"), model=TINY_MSEG, max_steps=8, log_every=4, **QUIET)
    train_mseg(config, _Poisoned(poison_at=99))
    assert len(checks) == 3  # steps 4 and 8, and once at the end: not once per step

    # NaN at step 3, found at the log line of step 4: the checkpoint of step 4 is never written.
    poisoned = dataclasses.replace(config, out=str(tmp_path / "nan"), checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*last good checkpoint.*step 2"):
        train_mseg(poisoned, _Poisoned(poison_at=2))
    from m2u.training.checkpoint import load_training_state

    state = load_training_state(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["networks"]["mseg"].values() if v.is_floating_point())


def test_ssim_window_is_built_once_per_device_and_dtype():
    first = ssim_module._gaussian_kernel_1d(11, 1.5, torch.float32, torch.device("cpu"))
    assert ssim_module._gaussian_kernel_1d(11, 1.5, torch.float32, torch.device("cpu")) is first
    double = ssim_module._gaussian_kernel_1d(11, 1.5, torch.float64, torch.device("cpu"))
    assert double is not first and double.dtype == torch.float64
    assert torch.allclose(double.float(), first) and float(first.sum()) == pytest.approx(1.0)
    x = torch.rand(2, 3, 16, 16)
    assert float(ssim_module.ssim(x, x)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ uint8 batches
def test_uint8_batches_train_exactly_like_float_batches(tmp_path):
    from m2u.datasets import write_synthetic_dataset
    from m2u.training.checkpoint import load_training_state

    write_synthetic_dataset(tmp_path / "data", 12, size=32, seed=0, split=(0.5, 0.25, 0.25))
    states = []
    for name, uint8 in (("float", False), ("uint8", True)):
        config = MSegTrainConfig(
            data=str(tmp_path / "data"), out=str(tmp_path / name), model=TINY_MSEG, batch_size=2, max_steps=3,
            log_every=1, **QUIET,
        )  # fmt: skip
        source = ShardDataSource(config.data, 2, num_workers=0, uint8=uint8)
        if uint8:
            assert next(iter(source.batches("train", 0)))["masked"].dtype == torch.uint8
        results = train_mseg(config, source)
        states.append(load_training_state(tmp_path / name / "checkpoints" / "last.pt")["networks"]["mseg"])
        assert results["steps"] == 3 and 0 <= results["val"]["dice"] <= 1
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_tensor_source_is_unchanged_on_cpu(tmp_path):
    data = TensorDataSource({"train": training_ddp_worker.tensors(4)}, batch_size=2)
    batch = next(iter(data.batches("train", 0)))
    assert batch["masked"].dtype == torch.float32


# ------------------------------------------------------------------------------------------ pipeline pre-flight
def test_pipeline_checks_the_gan_weights_before_any_stage(tmp_path):
    from m2u.pipelines.config import load_config
    from m2u.pipelines.run import PipelineError, run_pipeline

    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.jpg").write_bytes(b"not read")
    config = load_config("smoke")
    gan = dataclasses.replace(config.gan, perceptual_weight=10.0, vgg_weights=str(tmp_path / "absent.pth"))
    config = dataclasses.replace(config, faces=[str(faces)], gan=gan)
    with pytest.raises(PipelineError, match=r"gan stage cannot run.*absent\.pth"):
        run_pipeline(config, tmp_path / "run", echo=lambda _: None)
    assert not (tmp_path / "run" / "dataset").exists()  # M-Seg and the dataset never started
    # Up to the M-Seg stage only, the GAN's weights are not needed: the check passes (the run then fails on
    # the unreadable face, which is not this test's concern).
    from m2u.pipelines.run import check_stage_weights

    check_stage_weights(config, "mseg")


def test_the_cpus_model_is_read_from_cpuinfo_and_said_even_without_one():
    """m2u-eval's latency line said "cpu, cpu": Python's platform.processor() is empty on most Linux machines."""
    from m2u.training.device import cpu_model_name

    cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t\t: avx2\n"
    assert cpu_model_name(cpuinfo) == "AMD EPYC 9B14"
    assert cpu_model_name("processor\t: 0\n") not in ("", "cpu")
