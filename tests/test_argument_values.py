"""pipelines/argument_values.py called directly, milliseconds each.

`check_schedule_values`: custom `timesteps` / `sigmas` hold what the schedulers read with
`np.array(schedule)`, checked before any work. The accepted forms are those diffusers'
schedulers run on (each is set on a real scheduler here); the refused ones failed inside the
scheduler with numpy's message, or (a NaN) at the first step under another name.
`check_steps_fit_scheduler`: the scheduler's own refusal of a step count, named, and the
scheduler left as it was. `callback_tensor_names`: the names as given."""

from __future__ import annotations

import copy
import inspect
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, TCDScheduler

from clipcond.pipelines.argument_values import (
    callback_tensor_names,
    check_cross_attention_kwargs,
    check_device,
    check_eta,
    check_flag,
    check_schedule_values,
    check_steps_fit_scheduler,
)

EULER = EulerDiscreteScheduler(num_train_timesteps=1000)


@pytest.mark.parametrize(
    "schedule",
    [
        [999, 500, 40],
        [999.5, 500.25],
        np.array([999, 500]),
        torch.tensor([999.0, 500.0]),
        [torch.tensor(999), torch.tensor(500)],
        [np.int64(999), 500],
        [True, False],  # diffusers reads them as 1 and 0
    ],
    ids=["ints", "floats", "numpy", "tensor", "0d_tensors", "numpy_ints", "bools"],
)
def test_what_a_scheduler_runs_on_is_taken(schedule) -> None:
    copy.deepcopy(EULER).set_timesteps(timesteps=schedule)  # the reference: the scheduler takes it
    check_schedule_values("timesteps", schedule)


@pytest.mark.parametrize(
    "schedule, message",
    [
        (["a", "b"], "must be a flat list of real numbers, got ['a', 'b']"),
        ([[999, 10]], "must be a flat list of real numbers, got [[999, 10]]"),
        ([[999, 10], [5]], "must be a flat list of real numbers, got [[999, 10], [5]]"),
        ([999, None], "must be a flat list of real numbers, got [999, None]"),
        ([1 + 2j], "must be a flat list of real numbers, got [(1+2j)]"),
        (torch.tensor([[999, 10]]), "must be a flat list of real numbers, got tensor([[999,  10]])"),
        ([math.nan, 10], "must hold finite numbers, got [nan, 10]"),
        (torch.tensor([math.inf, 1.0]), "must hold finite numbers, got tensor([inf, 1.])"),
        ([], "must be a non-empty list of numbers, got []"),
        ("999", "must be a non-empty list of numbers, got '999'"),
        (999, "must be a non-empty list of numbers, got 999"),
        (torch.tensor(999.0), "must be a non-empty list of numbers, got tensor(999.)"),  # has __len__, no length
    ],
    ids=[
        "strings",
        "nested",
        "ragged",
        "none",
        "complex",
        "2d_tensor",
        "nan",
        "inf",
        "empty",
        "str",
        "int",
        "0d_tensor",
    ],
)
@pytest.mark.parametrize("name", ["timesteps", "sigmas"])
def test_what_no_schedule_can_hold_is_refused_by_name(name, schedule, message) -> None:
    with pytest.raises(ValueError) as refusal:
        check_schedule_values(name, schedule)
    assert str(refusal.value) == f"`{name}` {message}"


@pytest.mark.parametrize(
    "schedule, says",
    [
        (
            torch.tensor([999.0, 500.0], device="meta"),  # stands for a CUDA tensor: numpy reads neither
            "is a tensor on meta (requires_grad=False); the scheduler reads it with numpy, which reads tensors on "
            "the CPU only: pass `{name}.cpu()` or a list",
        ),
        (
            torch.tensor([999.0, 500.0], requires_grad=True),
            "is a tensor on cpu (requires_grad=True); the scheduler reads it with numpy, which reads tensors "
            "outside autograd only: pass `{name}.detach()` or a list",
        ),
    ],
    ids=["off_the_cpu", "needing_grad"],
)
@pytest.mark.parametrize("name", ["timesteps", "sigmas"])
def test_a_tensor_numpy_cannot_read_is_refused_saying_what_to_pass(name, schedule, says) -> None:
    """The reference: the scheduler fails on it (numpy's TypeError or autograd's RuntimeError),
    and takes what the message says to pass."""
    with pytest.raises((TypeError, RuntimeError)):
        copy.deepcopy(EULER).set_timesteps(timesteps=schedule)
    with pytest.raises(ValueError) as refusal:
        check_schedule_values(name, schedule)
    assert str(refusal.value) == f"`{name}` " + says.format(name=name)
    fixed = schedule.detach() if schedule.requires_grad else torch.tensor([999.0, 500.0])  # meta holds no values
    copy.deepcopy(EULER).set_timesteps(timesteps=fixed)
    check_schedule_values(name, fixed)


def test_a_count_the_scheduler_refuses_is_named_with_its_reason_and_the_scheduler_is_untouched() -> None:
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    before = scheduler.timesteps.clone()
    with pytest.raises(ValueError) as reason:  # the reference: the scheduler's own refusal
        copy.deepcopy(scheduler).set_timesteps(1001)
    with pytest.raises(ValueError) as refusal:
        check_steps_fit_scheduler(scheduler, 1001, None, None)
    assert str(refusal.value) == (
        "`num_inference_steps` 1001 is more than DDIMScheduler can set (at most its num_train_timesteps, 1000): "
        + " ".join(str(reason.value).split())
    )
    assert refusal.value.__cause__ is not None
    assert torch.equal(scheduler.timesteps, before) and scheduler.num_inference_steps == 4
    check_steps_fit_scheduler(scheduler, 1000, None, None)  # the most it takes
    assert torch.equal(scheduler.timesteps, before)


@pytest.mark.parametrize("custom", [dict(timesteps=[999, 500]), dict(sigmas=[14.6, 1.0])])
def test_a_custom_schedule_is_set_on_a_copy_and_the_step_count_is_not_read(custom) -> None:
    """The count is then the schedule's: 5000 steps (more than Euler can set) are not read,
    and the scheduler keeps its own schedule."""
    scheduler = copy.deepcopy(EULER)
    scheduler.set_timesteps(4)
    before = scheduler.timesteps.clone()
    check_steps_fit_scheduler(scheduler, 5000, custom.get("timesteps"), custom.get("sigmas"))
    assert torch.equal(scheduler.timesteps, before)


@pytest.mark.parametrize("sigmas", [[5.0], torch.tensor([0.0]), np.array([1.0])], ids=["list", "tensor", "numpy"])
def test_one_sigma_that_leaves_euler_no_step_is_refused_by_name(sigmas) -> None:
    """diffusers' Euler reads the last sigma as where the last step ends: one sigma sets no
    timestep (SDXL's pipeline then runs no step and returns the starting noise). A flow-match
    scheduler appends the end itself and is left its one step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    reference = copy.deepcopy(EULER)
    reference.set_timesteps(sigmas=sigmas)
    assert len(reference.timesteps) == 0
    expected = (
        f"`sigmas` {sigmas!r} leaves EulerDiscreteScheduler no step to run (it reads the last sigma as where the "
        "last step ends); give more values"
    )
    with pytest.raises(ValueError) as refusal:
        check_steps_fit_scheduler(EULER, None, None, sigmas)
    assert str(refusal.value) == expected
    check_steps_fit_scheduler(EULER, None, None, [5.0, 0.0])
    check_steps_fit_scheduler(FlowMatchEulerDiscreteScheduler(), None, None, [1.0])


def test_timesteps_that_leave_a_scheduler_no_step_are_refused_without_the_sigma_note() -> None:
    """No diffusers scheduler drops given timesteps; one that did (a stand-in) is refused
    naming `timesteps`, without Euler's note about the last sigma."""

    class Dropping:
        config = SimpleNamespace()
        timesteps = torch.tensor([999, 500])

        def set_timesteps(self, timesteps=None, device=None):
            self.timesteps = torch.tensor([], dtype=torch.long)

    with pytest.raises(ValueError) as refusal:
        check_steps_fit_scheduler(Dropping(), None, [999, 500], None)
    assert str(refusal.value) == "`timesteps` [999, 500] leaves Dropping no step to run; give more values"


@pytest.mark.parametrize("scheduler_name", ["LCMScheduler", "DDPMScheduler"])
def test_timesteps_a_scheduler_cannot_set_are_named_with_its_reason(scheduler_name) -> None:
    import diffusers

    scheduler = getattr(diffusers, scheduler_name)()
    with pytest.raises(ValueError) as reason:  # the reference: the scheduler's own refusal
        copy.deepcopy(scheduler).set_timesteps(timesteps=[10, 500])
    with pytest.raises(ValueError) as refusal:
        check_steps_fit_scheduler(scheduler, None, [10, 500], None)
    assert str(refusal.value) == (
        f"`timesteps` [10, 500] cannot be set on {scheduler_name}: " + " ".join(str(reason.value).split())
    )
    check_steps_fit_scheduler(scheduler, None, [500, 10], None)


def test_a_scheduler_without_a_training_count_is_named_without_one() -> None:
    class Refusing:
        config = SimpleNamespace()

        def set_timesteps(self, steps, device=None):
            raise ValueError("too   many\n steps")

    with pytest.raises(ValueError) as refusal:
        check_steps_fit_scheduler(Refusing(), 7, None, None)
    assert str(refusal.value) == "`num_inference_steps` 7 is more than Refusing can set: too many steps"


@pytest.mark.parametrize(
    "names, expected",
    [(None, ["latents"]), (["latents", "prompt_embeds"], ["latents", "prompt_embeds"]), (("latents",), ["latents"])],
)
def test_callback_tensor_names_are_the_names_given_as_a_list(names, expected) -> None:
    assert callback_tensor_names(names) == expected


@pytest.mark.parametrize("names", ["latents", ["latents", 3], {"latents"}])
def test_callback_tensor_names_that_are_no_list_of_strings_are_refused(names) -> None:
    with pytest.raises(TypeError) as refusal:
        callback_tensor_names(names)
    assert str(refusal.value) == (
        f"`callback_on_step_end_tensor_inputs` must be a list of tensor names such as ['latents'], got {names!r}"
    )


def _steps(scheduler_class, eta) -> torch.Tensor:
    """The reference: `scheduler_class`'s own steps with `eta`, 3 of them, on fixed latents."""
    scheduler = scheduler_class(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(3)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        noise = 0.5 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(int(t)))
        latents = scheduler.step(noise, t, latents, eta=eta, generator=torch.Generator().manual_seed(1)).prev_sample
    return latents


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, TCDScheduler])
@pytest.mark.parametrize("eta", [0, 0.3, 1.0])
def test_an_eta_in_the_unit_range_is_taken_where_the_scheduler_reads_it(scheduler_class, eta) -> None:
    assert torch.isfinite(_steps(scheduler_class, eta)).all()
    check_eta(eta, scheduler_class())


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, TCDScheduler])
@pytest.mark.parametrize("eta", [1.01, 1.5, 3])
def test_an_eta_above_one_is_refused_where_diffusers_gives_nan_or_asserts(scheduler_class, eta) -> None:
    try:
        diffusers_runs = bool(torch.isfinite(_steps(scheduler_class, eta)).all())
    except AssertionError:  # TCD: 0 <= eta <= 1
        diffusers_runs = False
    assert not diffusers_runs
    expected = (
        f"`eta` must be in [0, 1] for {scheduler_class.__name__} (0: deterministic, 1: the most noise), got {eta!r}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check_eta(eta, scheduler_class())


def test_a_negative_eta_is_refused_where_ddim_shrinks_its_steps_without_adding_noise() -> None:
    """The reason, in diffusers' DDIM: with -0.4 its step reads no noise (any noise gives the
    same latents) yet differs from the deterministic step (eta 0); TCD asserts."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(3)
    latents, model_output, noise = torch.randn(3, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = scheduler.timesteps[0]

    def step(eta, variance_noise):
        return scheduler.step(model_output, t, latents, eta=eta, variance_noise=variance_noise).prev_sample

    assert torch.equal(step(-0.4, noise), step(-0.4, 3 * noise))
    assert not torch.allclose(step(-0.4, noise), step(0.0, noise), atol=1e-3)
    with pytest.raises(AssertionError):
        _steps(TCDScheduler, -0.4)
    for scheduler_class in (DDIMScheduler, TCDScheduler):
        expected = (
            f"`eta` must be in [0, 1] for {scheduler_class.__name__} (0: deterministic, 1: the most noise), got -0.4"
        )
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            check_eta(-0.4, scheduler_class())


@pytest.mark.parametrize(
    "eta",
    ["0.5", None, math.nan, math.inf, True, [0.5], torch.tensor([0.5]), object()],
    ids=["str", "none", "nan", "inf", "bool", "list", "1d_tensor", "object"],  # an object's repr holds its address
)
@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
def test_an_eta_that_is_no_finite_number_is_refused_under_any_scheduler(scheduler_class, eta) -> None:
    with pytest.raises(ValueError) as refusal:
        check_eta(eta, scheduler_class())
    assert str(refusal.value) == f"`eta` must be a finite number (DDIM's noise weight, 0 to 1), got {eta!r}"


@pytest.mark.parametrize("eta", [-1, 1.5, 40.0])
def test_a_scheduler_that_does_not_read_eta_ignores_any_number_as_in_diffusers(eta) -> None:
    assert "eta" not in inspect.signature(EulerDiscreteScheduler.step).parameters
    check_eta(eta, EulerDiscreteScheduler())


@pytest.mark.parametrize("device", [None, "cpu", "cuda:1", 0, torch.device("cpu"), "meta"])
def test_every_device_torch_reads_is_taken(device) -> None:
    check_device(device)


@pytest.mark.parametrize(
    "device", [object(), "abc", -1, 1.5, True, ["cpu"]], ids=["object", "unknown", "negative", "float", "bool", "list"]
)
def test_a_device_torch_cannot_read_is_refused_by_name(device) -> None:
    with pytest.raises((TypeError, RuntimeError)):  # the reference: torch's own refusal
        torch.device(device)
    with pytest.raises(TypeError) as refusal:
        check_device(device)
    assert str(refusal.value) == (
        f"`device` must be a torch.device, a device string such as 'cuda:0' or 'cpu', or a device index, got {device!r}"
    )


@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.array(3) > 2])
def test_bools_numpy_bools_included_are_flags(value) -> None:
    check_flag("do_classifier_free_guidance", value)


@pytest.mark.parametrize(
    "value", ["False", 0, 1.0, None, torch.ones(2), [True]], ids=["str", "int", "float", "none", "tensor", "list"]
)
def test_anything_else_is_no_flag(value) -> None:
    with pytest.raises(TypeError) as refusal:
        check_flag("do_classifier_free_guidance", value)
    assert str(refusal.value) == f"`do_classifier_free_guidance` must be a bool, got {type(value).__name__}: {value!r}"


@pytest.mark.parametrize("kwargs", [None, {}, {"scale": 0.5}, {"scale": 0.5, "ip_adapter_masks": None}])
def test_cross_attention_kwargs_as_diffusers_passes_them_are_taken(kwargs) -> None:
    check_cross_attention_kwargs(kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ([("scale", 0.5)], "must be a dict or None, got list"),
        ({1: 2}, "must have strings as keys (the attention processors' argument names, such as 'scale'), got 1"),
        (
            {"scale": 0.5, b"x": 1},
            "must have strings as keys (the attention processors' argument names, such as 'scale'), got b'x'",
        ),
    ],
    ids=["list", "int_key", "bytes_key"],
)
def test_cross_attention_kwargs_that_cannot_be_keyword_arguments_are_refused(kwargs, message) -> None:
    if isinstance(kwargs, dict):
        with pytest.raises(TypeError, match="keywords must be strings"):  # the reference: Python's own
            dict(**kwargs)
    with pytest.raises(TypeError) as refusal:
        check_cross_attention_kwargs(kwargs)
    assert str(refusal.value) == f"`cross_attention_kwargs` {message}"
