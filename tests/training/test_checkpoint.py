"""Model files rebuild the right class from their metadata; training state loads with weights_only."""

from __future__ import annotations

import datetime

import pytest
import torch
from safetensors.torch import save_file

from m2u.training.checkpoint import (
    CheckpointError,
    average_models,
    load_model,
    load_training_state,
    read_model_metadata,
    save_model,
    save_training_state,
)
from m2u.training.models import (
    CARU2Net,
    DiscriminatorConfig,
    GeneratorConfig,
    MSeg,
    MSegConfig,
    PatchDiscriminator,
)


@pytest.mark.parametrize(
    "model",
    [
        lambda: CARU2Net(GeneratorConfig(width_multiplier=0.125, stages=3, channel_attention=False)),
        lambda: PatchDiscriminator(DiscriminatorConfig(channels=(3, 4, 8, 8, 8, 1))),
        lambda: MSeg(MSegConfig(base_channels=4, levels=3)),
    ],
)
def test_save_load_model_round_trip(tmp_path, model):
    torch.manual_seed(0)
    original = model()
    x = torch.rand(2, 3, 32, 32)  # batch 2: CARU-7 pools 32 px down to 1x1, where BN needs > 1 value
    args = (x, torch.ones(2, 1, 32, 32)) if isinstance(original, CARU2Net) else (x,)
    original.train()(*args)  # moves BN statistics and spectral-norm vectors away from their initial values
    path = save_model(tmp_path / "model.safetensors", original)
    loaded = load_model(path).module
    assert type(loaded) is type(original) and loaded.config == original.config
    assert not loaded.training
    original.eval()
    with torch.no_grad():
        assert torch.equal(loaded(*args), original(*args))
    assert read_model_metadata(path)[0] == type(original).__name__
    assert not list(tmp_path.glob("*.tmp"))


def test_average_models_is_the_mean_of_like_models_and_refuses_unlike_ones(tmp_path):
    paths = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = MSeg(MSegConfig(base_channels=4, levels=3))
        model.train()(torch.rand(2, 3, 32, 32))  # BN statistics differ per model too
        paths.append(save_model(tmp_path / f"m{seed}.safetensors", model))
    states = [load_model(p).module.state_dict() for p in paths]
    averaged = average_models(paths).module.state_dict()
    for key, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3)
        else:  # BN's batch count: the first file's
            assert torch.equal(value, states[0][key])
    assert any(
        not torch.equal(averaged[k], states[0][k]) for k in averaged if averaged[k].is_floating_point()
    )
    wider = save_model(tmp_path / "wider.safetensors", MSeg(MSegConfig(base_channels=8, levels=3)))
    with pytest.raises(CheckpointError, match="only like models average"):
        average_models([paths[0], wider])


def test_load_model_refuses_foreign_files(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(plain))
    with pytest.raises(CheckpointError, match="metadata"):
        load_model(plain)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load_model(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_training_state_refuses_arbitrary_pickles(tmp_path):
    path = save_training_state(tmp_path / "state.pt", {"step": 3, "weights": torch.ones(2)})
    assert load_training_state(path)["step"] == 3

    # Any class outside torch's allow-list stands for an arbitrary pickle here.
    torch.save({"object": datetime.date(2020, 1, 1)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_training_state(tmp_path / "evil.pt")


def test_a_full_disk_while_the_training_state_is_written_is_an_oserror_not_torchs_runtimeerror(
    tmp_path, monkeypatch
):
    """torch's zip writer says a failed write as `RuntimeError: ... unexpected pos 704 vs 598`: m2u-train ended in
    a 60-line traceback on a full disk, where every other disk error is one line (m2u.core.guard)."""
    import errno
    import io

    from m2u.training import checkpoint

    class FillsUp(io.BytesIO):  # a disk with room for 4 KB
        def write(self, data):
            if self.tell() + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(checkpoint, "open", lambda path, mode: FillsUp(), raising=False)
    with pytest.raises(OSError) as caught:
        save_training_state(tmp_path / "state.pt", {"weights": torch.ones(100_000)})
    assert caught.value.errno == errno.ENOSPC
    assert not list(tmp_path.iterdir())  # nothing half-written left
