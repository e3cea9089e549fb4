"""Where everything lives. Every path the pipeline uses derives from three roots.

    >>> p = Paths.from_config()                       # luigi.cfg [pipeline], env overrides
    >>> p.gen_dir("draft", "d_abc")                   # data/gens/draft/d_abc
    >>> Paths(data_root="/tmp/x", raw_root="../shared/daydreaming/1_raw").raw_root

Precedence: explicit argument > the luigi ``[pipeline]`` config (luigi.cfg, LUIGI_CONFIG_PATH, or
``--pipeline-data-root`` style flags on the luigi command line) > defaults
(data, <data_root>/1_raw, cohorts).
"""
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError
from .stages import STAGE, STAGES

# ids end up as folder names: keep them to a safe, portable alphabet
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")


def check_id(value, what="id", where="", error=PipelineError):
    """Refuse ids that could escape their folder (``../x``, ``/etc``, empty, NUL, very long)."""
    text = "" if value is None else str(value)
    if not _SAFE_ID.match(text) or ".." in text:
        loc = f"{where}: " if where else ""
        raise error(
            f"{loc}invalid {what} {text[:80]!r}: use 1-128 letters, digits, '_', '-', '.', ':' or '+', "
            f"starting with a letter or digit, and no '..'"
        )
    return text


@dataclass(frozen=True)
class Paths:
    data_root: Path
    raw_root: Path
    cohorts_root: Path

    def __init__(self, data_root=None, raw_root=None, cohorts_root=None):
        data_root = Path(data_root or "data")
        object.__setattr__(self, "data_root", data_root)
        object.__setattr__(self, "raw_root", Path(raw_root) if raw_root else data_root / "1_raw")
        object.__setattr__(self, "cohorts_root", Path(cohorts_root or "cohorts"))

    @classmethod
    def from_config(cls, data_root=None, raw_root=None, cohorts_root=None):
        from .config import pipeline as section

        cfg = section()
        return cls(data_root or cfg.data_root or None, raw_root or cfg.raw_root or None,
                   cohorts_root or cfg.cohorts_root or None)

    # Fixed files and folders: one line each, a property naming the path below its root.

    # catalog
    concepts_json = property(lambda self: self.raw_root / "concepts" / "day_dreaming_concepts.json")
    concepts_metadata_csv = property(lambda self: self.raw_root / "concepts_metadata.csv")
    models_csv = property(lambda self: self.raw_root / "llm_models.csv")
    replication_csv = property(lambda self: self.raw_root / "replication_config.csv")

    def concept_description(self, level, concept_id):
        return self.raw_root / "concepts" / f"descriptions-{level}" / f"{concept_id}.txt"

    def templates_csv(self, stage):
        return self.raw_root / f"{stage}_templates.csv"

    def template_file(self, stage, template_id):
        return self.raw_root / "templates" / stage / f"{template_id}.txt"

    # cohorts
    # data/cohorts: what each cohort's runs wrote (its spec lives under cohorts_root)
    cohorts_data_root = property(lambda self: self.data_root / "cohorts")
    combo_mappings_csv = property(lambda self: self.data_root / "combo_mappings.csv")

    def spec_files(self, cohort_id):
        """Where a cohort's spec may live, first found wins: this project's spec.yaml, then the
        original's spec/config.yaml (beside the spec.yaml, or under data/cohorts/<id>/)."""
        cid = check_id(cohort_id, "cohort id")
        return [self.cohorts_root / cid / "spec.yaml", self.cohorts_root / cid / "spec" / "config.yaml",
                self.cohort_dir(cid) / "spec" / "config.yaml"]

    def spec_file(self, cohort_id):
        """The cohort's spec (see spec_files); the first location when there is none yet."""
        candidates = self.spec_files(cohort_id)
        return next((p for p in candidates if p.is_file()), candidates[0])

    def known_cohorts(self):
        """Ids of the cohorts with a spec in any spec location."""
        found = set()
        for root, pattern in ((self.cohorts_root, "*/spec.yaml"), (self.cohorts_root, "*/spec/config.yaml"),
                              (self.cohorts_data_root, "*/spec/config.yaml")):
            found.update(p.relative_to(root).parts[0] for p in root.glob(pattern))
        return sorted(found)

    def cohort_dir(self, cohort_id):
        return self.cohorts_data_root / check_id(cohort_id, "cohort id")

    def membership_csv(self, cohort_id):
        return self.cohort_dir(cohort_id) / "membership.csv"

    def manifest_json(self, cohort_id):
        return self.cohort_dir(cohort_id) / "manifest.json"

    def reports_dir(self, cohort_id):
        return self.cohort_dir(cohort_id) / "reports"

    def results_dir(self, cohort_id):
        return self.data_root / "results" / check_id(cohort_id, "cohort id")

    # generations, the event log, run logs, result tables
    gens_root = property(lambda self: self.data_root / "gens")
    events_dir = property(lambda self: self.data_root / "events")
    logs_dir = property(lambda self: self.data_root / "logs")
    tables_dir = property(lambda self: self.data_root / "tables")

    def stage_dir(self, stage):
        if stage not in STAGES:
            raise PipelineError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
        return self.gens_root / STAGE[stage].folder

    def gen_dir(self, stage, gen_id):
        if stage not in STAGES:
            return self.stage_dir(stage)  # raises, naming the stage
        # one join, not three: asked for several times per generation
        return self.data_root.joinpath("gens", STAGE[stage].folder, check_id(gen_id, "generation id"))
