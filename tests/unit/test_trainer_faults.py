"""The test fault hooks, read once from the environment (trainer/faults.py)."""

from __future__ import annotations

from trainer.faults import Faults


def test_unset_environment_asks_for_nothing() -> None:
    faults = Faults.from_env({})
    assert not faults.requested("kill_after_step", 1)
    assert (faults.step_delay_s, faults.upload_delay_s) == (0.0, 0.0)


def test_the_fault_list_names_each_fault_at_its_step() -> None:
    faults = Faults.from_env(
        {
            "BRIGHTRUN_TRAINER_FAULT": "kill_in_upload:6, kill_after_step:4,"
            "sigterm_at_step:3,nan_loss_at_step:2",
            "BRIGHTRUN_TRAINER_STEP_DELAY": "0.25",
            "BRIGHTRUN_TRAINER_UPLOAD_DELAY": "1.5",
        }
    )
    assert faults.requested("kill_in_upload", 6)
    assert faults.requested("kill_after_step", 4)
    assert faults.requested("sigterm_at_step", 3)
    assert faults.requested("nan_loss_at_step", 2)
    assert not faults.requested("kill_after_step", 3)  # another step
    assert not faults.requested("kill_in_upload", 4)  # another fault's step
    assert (faults.step_delay_s, faults.upload_delay_s) == (0.25, 1.5)


def test_an_item_without_a_step_is_ignored() -> None:
    faults = Faults.from_env({"BRIGHTRUN_TRAINER_FAULT": "kill_after_step,sigterm_at_step:x,,"})
    assert faults.at_step == frozenset()


def test_signal_does_nothing_when_the_fault_was_not_asked_for() -> None:
    Faults.from_env({"BRIGHTRUN_TRAINER_FAULT": "kill_after_step:4"}).signal("kill_after_step", 3)
