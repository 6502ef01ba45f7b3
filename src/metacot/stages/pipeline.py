"""Run several stages in order (the default job: datagen -> sft -> eval)."""

from __future__ import annotations

import logging
from typing import Any

from metacot.stages.base import Stage

log = logging.getLogger(__name__)


class PipelineStage(Stage):
    name = "pipeline"

    def __init__(self, stages: list[Stage], name: str | None = None):
        super().__init__(name)
        if not stages:
            raise ValueError("stage=pipeline needs at least one stage in `stage.stages`")
        self.stages = stages

    def run(self, cfg: Any) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for stage in self.stages:
            log.info("pipeline: running stage %s", stage.name)
            stage.use_earlier(dict(summary))
            result = stage.run(cfg) or {}
            summary[stage.name] = result
            if "objective" in result:
                summary["objective"] = result["objective"]
        return summary
