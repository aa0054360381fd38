"""What every type of a job is measured and calibrated on, prepared once after the fetch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .events import EventStream
from .plan import JobPlan
from .source import Fetched
from .spec import JobSpec
from .texts import EvalData, build_eval_data, calibration_ids
from .verify import Figures, load_tokenizer, reference_figures


@dataclass(frozen=True, kw_only=True)
class Measurements:
    data: EvalData
    reference: Figures | None  # the source's figures; None when the source is never in memory as a whole
    calibration: torch.Tensor | None  # token ids of plan.texts.calibration_text; None: no calibrated method


def prepare_measurements(spec: JobSpec, plan: JobPlan, fetched: Fetched, events: EventStream) -> Measurements:
    texts = plan.texts
    tokenizer = load_tokenizer(fetched.folder)
    data = build_eval_data(tokenizer, texts.eval_text, spec.eval_tokens)
    calibration = None
    if texts.calibration_text is not None:  # only a job with a calibrated int4 method has one
        calibration = calibration_ids(tokenizer, texts.calibration_text, spec.calibration_tokens)
    reference = reference_figures(fetched.folder, plan.hardware, data, events) if plan.measures_source else None
    return Measurements(data=data, reference=reference, calibration=calibration)
