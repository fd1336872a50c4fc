"""What each stage's ``python -m training_ext.main_*`` module exposes: ``parse_args``, ``run`` and ``main``.

Importing this module (and so an entry point) loads neither torch nor open_clip: the flags are parsed and checked
first, and the stage (with the engine, torch and open_clip) is imported only to run.
"""
from typing import Optional, Sequence

from training_ext.engine import params
from training_ext.stages.flags import DistillFlags, FinetuneFlags


class StageEntryPoint:
    """One entry point: a stage's flags (``DistillFlags`` / ``FinetuneFlags`` for a position type)."""

    def __init__(self, flags):
        self.flags = flags

    def parse_args(self, argv: Optional[Sequence[str]] = None):
        """The stage's flags (its own, TULIP's spellings, open_clip_train's) as one namespace, checked; a mistake
        is one error line and exit status 2."""
        return params.parse_args(argv, self.flags)

    def stage(self):
        if isinstance(self.flags, DistillFlags):
            from training_ext.stages.distill_stage import DistillStage
            return DistillStage(self.flags.position)
        assert isinstance(self.flags, FinetuneFlags)
        from training_ext.stages.finetune_stage import FinetuneStage
        return FinetuneStage(self.flags.position)

    def run(self, args):
        """Train as the parsed flags say; returns the final state (model, optimizer, epoch, step, checkpoint)."""
        from training_ext.engine.trainer import run_stage
        return run_stage(args, self.stage())

    def main(self, argv=None) -> None:
        args = self.parse_args(argv)
        from training_ext.engine.trainer import run_command  # torch and open_clip load only now
        run_command(args, self.stage())
