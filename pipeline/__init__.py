"""DayDreaming on Luigi. ``luigi --module pipeline RunCohort --cohort-id demo`` finds the tasks here."""
from .tasks import (  # noqa: F401
    BuildCohort,
    CohortReport,
    DraftTask,
    EssayTask,
    EvaluationTask,
    ReplayResults,
    RunCohort,
)
