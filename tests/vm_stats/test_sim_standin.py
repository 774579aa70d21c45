"""The simulated VM's stand-in nvidia-smi: what a test (or the demo) gave it is printed
inside the VM, and a reset VM (Colab's next one) has the same kind of GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.sim.vm import RECORDED_T4, simulated_vm

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]
ON_PATH = {"PATH": "/root/.colab-sim/bin:/usr/bin:/bin"}


def test_the_standin_prints_the_recorded_answer_across_a_reset(tmp_path: Path) -> None:
    with simulated_vm(tmp_path, sshd=False) as vm:
        assert vm.run(["nvidia-smi"], env=ON_PATH).returncode == 127  # a CPU runtime
        vm.set_nvidia_smi(RECORDED_T4)
        assert vm.run(["nvidia-smi"], env=ON_PATH).stdout == RECORDED_T4
        first = vm.vm_id
        vm.reset()
        assert vm.vm_id != first
        assert vm.run(["nvidia-smi"], env=ON_PATH).stdout == RECORDED_T4
        vm.set_nvidia_smi(None)
        assert vm.run(["nvidia-smi"], env=ON_PATH).returncode == 127
