"""The input catalog (``data/1_raw``): concepts, templates, models, replication defaults.

    >>> cat = load_catalog(Paths.from_config())
    >>> cat.templates["draft"]["creative-synthesis-v7"].parser
    >>> cat.concept_text("default-mode-network", "paragraph")   # -> (text, level actually used)

Loading validates everything it reads and fails with a CatalogError naming the file and id.
"""
import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta

from .errors import CatalogError
from .paths import Paths, check_id
from .stages import STAGES, TABLE

DESCRIPTION_LEVELS = ("sentence", "paragraph", "article")
GENERATORS = ("llm", "copy")
# what each stage's templates may reference (see prompts.py)
TEMPLATE_VARIABLES = {s.name: set(s.template_variables) for s in TABLE}
DEFAULT_PARSER = {s.name: s.default_parser for s in TABLE}
LOCAL_PROVIDER = "local"
# optional llm_models.csv columns, USD per million tokens (daydream plan's cost estimate)
PRICE_COLUMNS = ("prompt_price_per_mtok", "completion_price_per_mtok")


@dataclass(frozen=True)
class Template:
    stage: str
    template_id: str
    name: str
    description: str
    parser: str
    generator: str
    active: bool
    path: Path
    source: str  # "" for copy-mode templates without a file


@dataclass(frozen=True)
class Model:
    id: str
    model: str
    provider: str
    display_name: str
    specialization: str
    prompt_price_per_mtok: float | None = None  # USD per million tokens; None: not in the catalog
    completion_price_per_mtok: float | None = None

    @property
    def is_local(self):
        return self.provider == LOCAL_PROVIDER

    @property
    def pool(self):
        """Luigi resource pool: free OpenRouter models queue behind a small limit."""
        if self.is_local:
            return "llm_local"
        return "llm_free" if self.model.endswith(":free") else "llm_paid"


@dataclass(frozen=True)
class Concept:
    concept_id: str
    name: str
    active: bool
    texts: dict  # level -> text


@dataclass
class Catalog:
    root: Path
    concepts: dict
    templates: dict  # stage -> {template_id: Template}
    models: dict
    replicates: dict  # stage -> default replicate count
    hash: str
    _env: jinja2.Environment = field(default=None, repr=False)
    _compiled: dict = field(default_factory=dict, repr=False)
    _variables: dict = field(default_factory=dict, repr=False)  # (stage, template_id) -> names it uses

    def concept_text(self, concept_id, level):
        """Text at ``level``, falling back to a shorter level. Returns (text, level_used)."""
        concept = self.concepts[concept_id]
        order = DESCRIPTION_LEVELS[: DESCRIPTION_LEVELS.index(level) + 1]
        for candidate in reversed(order):
            if candidate in concept.texts:
                return concept.texts[candidate], candidate
        raise CatalogError(
            f"{self.root}: concept {concept_id!r} has no description at level {level!r} or shorter; "
            f"add concepts/descriptions-{level}/{concept_id}.txt"
        )

    def compiled(self, stage, template_id):
        """The Jinja2 template, compiled once per process."""
        key = (stage, template_id)
        if key not in self._compiled:
            tpl = self.templates[stage][template_id]
            self._compiled[key] = self._env.from_string(tpl.source)
        return self._compiled[key]

    def check_template_variables(self, stage, template_id):
        """Fail before any LLM call if a template uses a variable its stage does not provide."""
        tpl = self.templates[stage][template_id]
        if tpl.generator == "copy":
            return
        key = (stage, template_id)
        if key not in self._variables:  # parsed once per process, like the compiled template
            self._variables[key] = jinja2.meta.find_undeclared_variables(self._env.parse(tpl.source))
        unknown = sorted(self._variables[key] - TEMPLATE_VARIABLES[stage])
        if unknown:
            raise CatalogError(
                f"{tpl.path}: {stage} template {template_id!r} uses undefined variable(s) "
                f"{', '.join(unknown)}; {stage} templates may use only "
                f"{', '.join(sorted(TEMPLATE_VARIABLES[stage]))}"
            )


def read_csv(path, required, *, id_column=None):
    """Rows of a UTF-8 CSV as dicts, with the 1-based line number under ``_line``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CatalogError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {', '.join(missing)} (header is {','.join(header)})")
    rows, seen = [], {}
    for row in reader:
        line = reader.line_num
        if None in row:
            raise CatalogError(f"{path}:{line}: more fields than the header has")
        row = {k: (v or "").strip() for k, v in row.items()}
        if id_column:
            rid = row[id_column]
            if not rid:
                raise CatalogError(f"{path}:{line}: empty {id_column}")
            check_id(rid, id_column, f"{path}:{line}", CatalogError)
            if rid in seen:
                raise CatalogError(f"{path}:{line}: duplicate {id_column} {rid!r} (first on line {seen[rid]})")
            seen[rid] = line
        row["_line"] = line
        rows.append(row)
    return rows


def _active(row, path):
    value = row.get("active", "").lower()
    if value in ("", "true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise CatalogError(f"{path}:{row['_line']}: active must be true or false, not {row['active']!r}")


def _load_concepts(paths, digest):
    rows = read_csv(paths.concepts_metadata_csv, ["concept_id", "name"], id_column="concept_id")
    digest.update(paths.concepts_metadata_csv.read_bytes())
    from_json = {}
    if paths.concepts_json.exists():
        digest.update(paths.concepts_json.read_bytes())
        try:
            doc = json.loads(paths.concepts_json.read_text(encoding="utf-8"))
            for item in doc.get("concepts", []):
                from_json[item["concept_id"]] = item
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as exc:
            raise CatalogError(f"{paths.concepts_json}: malformed concepts JSON ({exc})") from None
    concepts = {}
    for row in rows:
        cid = row["concept_id"]
        texts = {}
        for level in DESCRIPTION_LEVELS:
            f = paths.concept_description(level, cid)
            if f.exists():
                try:
                    texts[level] = f.read_text(encoding="utf-8").strip()
                except UnicodeDecodeError:
                    raise CatalogError(f"{f}: not UTF-8; re-save it as UTF-8") from None
                digest.update(f"{level}/{cid}".encode() + texts[level].encode())
            elif from_json.get(cid, {}).get(level):
                texts[level] = str(from_json[cid][level]).strip()
        if not texts:
            raise CatalogError(
                f"{paths.concepts_metadata_csv}:{row['_line']}: concept {cid!r} has no description; add "
                f"concepts/descriptions-sentence/{cid}.txt or a 'sentence' entry in day_dreaming_concepts.json"
            )
        concepts[cid] = Concept(cid, row["name"], _active(row, paths.concepts_metadata_csv), texts)
    return concepts


def _load_templates(paths, stage, env, digest):
    from .parsers import KNOWN_PARSERS

    csv_path = paths.templates_csv(stage)
    rows = read_csv(csv_path, ["template_id", "template_name", "parser", "generator"], id_column="template_id")
    digest.update(csv_path.read_bytes())
    out = {}
    for row in rows:
        tid, where = row["template_id"], f"{csv_path}:{row['_line']}"
        generator = row["generator"] or "llm"
        if generator not in GENERATORS:
            raise CatalogError(f"{where}: template {tid!r} has unknown generator {generator!r}; use llm or copy")
        parser = row["parser"] or DEFAULT_PARSER[stage]
        if parser not in KNOWN_PARSERS:
            raise CatalogError(
                f"{where}: template {tid!r} has unknown parser {parser!r}; known: {', '.join(sorted(KNOWN_PARSERS))}"
            )
        if generator == "copy" and stage != "essay":
            raise CatalogError(f"{where}: template {tid!r}: generator copy is only for essay templates")
        path = paths.template_file(stage, tid)
        source = ""
        if generator == "llm":
            if not path.exists():
                raise CatalogError(f"{where}: template {tid!r} names no file: {path} does not exist")
            try:
                source = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise CatalogError(f"{path}: not UTF-8; re-save it as UTF-8") from None
            try:
                env.parse(source)
            except jinja2.TemplateSyntaxError as exc:
                raise CatalogError(f"{path}:{exc.lineno}: {stage} template {tid!r} is not valid Jinja2: {exc.message}") from None
            digest.update(f"{stage}/{tid}".encode() + source.encode())
        out[tid] = Template(stage, tid, row["template_name"], row.get("description", ""), parser, generator,
                            _active(row, csv_path), path, source)
    return out


def _price(row, column, path):
    """An optional price cell: None when the column is absent or empty, else a non-negative number."""
    text = row.get(column, "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise CatalogError(f"{path}:{row['_line']}: model {row['id']!r}: {column} must be a non-negative number "
                           f"(USD per million tokens) or empty, not {text!r}")
    return value


def _load_models(paths, digest):
    rows = read_csv(paths.models_csv, ["id", "model", "provider"], id_column="id")
    digest.update(paths.models_csv.read_bytes())
    models = {}
    for row in rows:
        if not row["model"]:
            raise CatalogError(f"{paths.models_csv}:{row['_line']}: model {row['id']!r} has an empty 'model' column")
        models[row["id"]] = Model(row["id"], row["model"], row["provider"], row.get("display_name", ""),
                                  row.get("specialization", ""),
                                  *(_price(row, column, paths.models_csv) for column in PRICE_COLUMNS))
    return models


def _load_replicates(paths, digest):
    reps = {stage: 1 for stage in STAGES}
    if not paths.replication_csv.exists():
        return reps
    digest.update(paths.replication_csv.read_bytes())
    for row in read_csv(paths.replication_csv, ["stage", "replicates"], id_column="stage"):
        if row["stage"] not in reps:
            raise CatalogError(f"{paths.replication_csv}:{row['_line']}: unknown stage {row['stage']!r}")
        try:
            reps[row["stage"]] = int(row["replicates"])
            assert reps[row["stage"]] >= 1
        except (ValueError, AssertionError):
            raise CatalogError(
                f"{paths.replication_csv}:{row['_line']}: replicates must be a positive integer, not {row['replicates']!r}"
            ) from None
    return reps


def load_catalog(paths: Paths) -> Catalog:
    if not paths.raw_root.is_dir():
        raise CatalogError(f"{paths.raw_root}: catalog folder not found; set [pipeline] raw_root or --raw-root")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    digest = hashlib.sha256()
    concepts = _load_concepts(paths, digest)
    templates = {stage: _load_templates(paths, stage, env, digest) for stage in STAGES}
    models = _load_models(paths, digest)
    replicates = _load_replicates(paths, digest)
    return Catalog(paths.raw_root, concepts, templates, models, replicates, digest.hexdigest()[:16], env)
