"""A type's plan is what its card says: the reproduce command of every type × device × int4 method runs.

Cards are built from plans made by `plan.plan_type` (the function preflight uses) on a CPU and on a CUDA GPU, and
their command is read back with the CLI's own parser and turned into the JobSpec the CLI would run.
"""

from __future__ import annotations

import re
import shlex

import pytest

from quantizer import card, int4, recipes
from quantizer.cli import build_parser, spec_from_args
from quantizer.hardware import Hardware
from quantizer.plan import RELOAD, WHOLE, Int4Plan, JobPlan, Output, Verification, plan_type
from quantizer.source import SourceInfo
from quantizer.typejob import Stages, measured_result, planned_result
from quantizer.verify import VerifyResult

CPU, H200 = Hardware("cpu"), Hardware("cuda", (9, 0), "NVIDIA H200")
METHOD_NAMES = [None, *int4.METHODS, *int4.ABLATIONS]
INFO = SourceInfo(
    ref="alice/tiny",
    name="tiny",
    config={"model_type": "llama", "torch_dtype": "bfloat16", "hidden_size": 64},
    architecture="LlamaForCausalLM",
    model_type="llama",
    weight_files=("model.safetensors",),
    weight_bytes=1000,
    revision="0123456789abcdef0123456789abcdef01234567",
    repo_id="alice/tiny",
)
VERIFIED = VerifyResult(
    reload_ok=True,
    logits_rel_err=0.01,
    top1_agreement=0.99,
    ppl_source=10.0,
    ppl_quantized=10.1,
    ppl_delta_pct=1.0,
    quantized_linear=14,
    skipped_linear=1,
    sample="a sample",
    sample_source="a sample",
    eval_tokens=256,
    tokens_per_second=10.0,
    tokens_per_second_source=10.0,
)


def cases():
    for hardware in (CPU, H200):
        for recipe in recipes.RECIPES.values():
            if recipe.unsupported_reason(hardware) is None:
                for method in METHOD_NAMES if recipe.int4_format(hardware) else [None]:
                    yield pytest.param(hardware, recipe, method, id=f"{hardware.device}-{recipe.name}-{method}")


def planned(hardware: Hardware, recipe: recipes.Recipe, method: str | None):
    choice = int4.MethodChoice(method=int4.get_method(method) if method else None)
    int4_plan = Int4Plan(choice=choice, group_size=64, calibration_name="text")
    return plan_type(
        recipe,
        hardware=hardware,
        int4_plan=int4_plan,
        engine=WHOLE,
        verification=Verification(mode=RELOAD, reason="reloaded"),
        output=Output(target=f"alice/tiny-{recipe.suffix}", push=True, local_folder=None),
    )


@pytest.mark.parametrize(("hardware", "recipe", "method"), list(cases()))
def test_every_cards_reproduce_command_runs_with_the_cli(hardware, recipe, method):
    type_plan = planned(hardware, recipe, method)
    job = JobPlan(
        hardware=hardware,
        source=None,
        info=INFO,
        identity=None,
        types=(type_plan,),
        texts=None,
        streaming=False,
        measures_source=True,
        private=False,
        allow_partial=False,
        compute="",
        upcast=1.0,
    )
    result = measured_result(planned_result(job, type_plan), Stages(verified=VERIFIED), {}, (None, None))
    text = card.render(INFO, recipe, result, made_on_hardware=hardware, eval_text_name="text").content
    command = re.search(r"^python -m quantizer .*$", text, re.M).group(0)
    args = build_parser().parse_args(shlex.split(command)[3:])  # a refused option exits here
    spec = spec_from_args(args)
    assert spec.quant_types == [recipe.name] and spec.device == hardware.device
    assert spec.source == f"{INFO.repo_id}@{INFO.revision}" and spec.target == type_plan.output.target
    if type_plan.int4:
        assert spec.group_size == 64
        # the command asks for the method the output was made with
        assert int4.get_method(spec.int4_method) is type_plan.int4.method
    else:
        assert spec.int4_method is None and spec.group_size is None


def test_a_job_note_reaches_every_type_and_an_int4_note_only_int4_types():
    choice = int4.MethodChoice(method=int4.get_method("asym"), reason="int4 method asym (as asked)")
    int4_plan = Int4Plan(choice=choice, group_size=64)
    for recipe in recipes.RECIPES.values():
        if recipe.unsupported_reason(CPU) is not None:
            continue
        type_plan = plan_type(
            recipe,
            hardware=CPU,
            int4_plan=int4_plan,
            engine=WHOLE,
            verification=Verification(mode=RELOAD, reason="reloaded"),
            output=Output(target="t", push=True, local_folder=None),
            job_notes=("the target repo is private because the source is gated",),
        )
        assert "the target repo is private because the source is gated" in type_plan.notes
        assert ("int4 method asym (as asked)" in type_plan.notes) == bool(recipe.int4_format(CPU))
