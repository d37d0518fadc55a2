"""Precision per step of the main job: what `deepcuts_fast.precision` decides for each step on this machine."""
from __future__ import annotations

from ..precision import choose, choose_for_scoring, distinct
from ..task import TaskModel
from .config import JobConfig


def latency_dtypes(config: JobConfig, device: str) -> list[str]:
    """The job's latency dtypes resolved on `device` ("auto" -> the fastest native one), without repeats."""
    return [choose("infer", device, d).name for d in distinct("infer", device, config.latency_dtypes)]


def step_precisions(config: JobConfig, task: TaskModel, device: str = "cpu") -> dict[str, dict]:
    """The dtype each step of the job runs in on this machine, and why (recorded in results.json and the report)."""
    finetuned = (task.finetune_info or {}).get("precision")  # dtype and reason of the fine-tune, if it ran here
    return {
        "fine-tune": finetuned or {"dtype": None, "reason": "the model was given fine-tuned"},
        "scoring": choose_for_scoring(device, config.dtype, None).to_dict(),
        "scoring (noisy passes)": choose_for_scoring(device, config.dtype, config.noise_std).to_dict(),
        "recovery fine-tunes": choose("train", device, config.dtype).to_dict(),
        "rewinding": {"dtype": task.finetune_dtype, "reason": "the original fine-tune's, so the replay "
                                                                        "starts from and repeats it exactly"},
        "reconstruction": choose("infer", device, config.dtype).to_dict(),
        "evaluation": {"dtype": "fp32", "reason": "fp32 on every machine, so accuracies compare across machines"},
        "latency": {"dtype": ", ".join(latency_dtypes(config, device)),
                    "reason": "fp32, and the fastest native dtype where it differs: "
                              + choose("infer", device, "auto").reason},
    }
