"""The launch counter (kernels per layer, host synchronizations) works on CPU tensors: what issue 18 measures."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kolm_audit.runtime.launches import LaunchCounter, launch_summary, triton_launch  # noqa: E402


class _Layers:
    def layer(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2).reshape(-1).add_(1)                   # mul, add_: two kernels; reshape: a view


def test_kernels_are_counted_views_and_allocations_are_not_and_syncs_are_seen() -> None:
    x = torch.arange(12)
    with LaunchCounter() as c:
        y = x.view(3, 4).t().contiguous()                    # view, t: no kernel; contiguous: a copy
        torch.empty(5)
        bool((y > 3).any())                                  # gt, any: kernels; bool(): a host sync
    assert c.counts == {"torch:clone": 1, "torch:gt": 1, "torch:any": 1, "sync": 1}
    assert c.launches() == 3 and launch_summary(c.counts).startswith("3 launches (0 Triton, 3 torch), 1 host syncs")


def test_sections_give_launches_per_call() -> None:
    obj = _Layers()
    with LaunchCounter() as c, c.section(obj, "layer"):
        for _ in range(3):
            obj.layer(torch.ones(4))
        torch.zeros(2)                                       # outside the section
    assert c.per_call("layer") == {"torch:add_": 1.0, "torch:mul": 1.0}    # in-place ops keep their name
    assert c.counts["torch:mul"] == 3 and "layer" not in obj.__dict__       # the method is restored


def test_a_triton_launch_counts_once_and_hides_the_torch_ops_inside_it() -> None:
    with LaunchCounter() as c:
        with triton_launch("my_kernel"):
            torch.ones(3).add_(1)                            # what Triton's interpreter may do on CPU
        torch.ones(3).mul_(2)
    assert c.counts["triton:my_kernel"] == 1 and "torch:add_" not in c.counts and c.counts["torch:mul_"] == 1
    with triton_launch("outside"):                           # no active counter: nothing happens
        pass
