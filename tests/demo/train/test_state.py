import os

import pytest
import torch

from trdq.demo.train.state import load_state, save_state


class _Payload:
    """Unpickling this runs a shell command, as a crafted state.pt would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_state_file_is_refused_without_running_anything(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "state.pt"
    torch.save({"model": {}, "opt": {}, "step": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="state.pt is not a trdq training state this version can read safely"):
        load_state(path)
    assert not marker.exists()


def test_state_round_trips_and_names_what_is_missing(tmp_path):
    path = tmp_path / "state.pt"
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_state(path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": 7, "seconds": 1.5})
    state = load_state(path)
    assert state["step"] == 7 and torch.equal(state["model"]["weight"], model.weight)
    torch.optim.AdamW(model.parameters()).load_state_dict(state["opt"])
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left
    with pytest.raises(ValueError, match="lacks ema"):
        load_state(path, required=("model", "ema"))
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="delete it to start over"):
        load_state(path)
