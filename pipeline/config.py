"""Luigi config sections. Each is set in luigi.cfg or on the luigi command line, e.g.
``luigi --module pipeline RunCohort --cohort-id demo --pipeline-raw-root ../shared/daydreaming/1_raw``.
"""
import luigi


class pipeline(luigi.Config):  # noqa: N801 - the class name is the [pipeline] section name
    data_root = luigi.Parameter(default="data")
    raw_root = luigi.Parameter(default="")
    cohorts_root = luigi.Parameter(default="cohorts")
    chunk_size = luigi.IntParameter(default=200, description="generations scheduled per chunk (chunks.py)")
    progress = luigi.BoolParameter(default=True, description="show and report a cohort's progress while it runs")


class llm(luigi.Config):  # noqa: N801
    base_url = luigi.Parameter(default="https://openrouter.ai/api/v1")
    api_key_env = luigi.Parameter(default="OPENROUTER_API_KEY")
    timeout_s = luigi.FloatParameter(default=180.0)
    call_deadline_s = luigi.FloatParameter(
        default=300.0, description="wall-clock limit of one generation's call: every attempt, wait and body byte")
    max_attempts = luigi.IntParameter(default=6)
    backoff_base_s = luigi.FloatParameter(default=2.0)
    max_tokens = luigi.IntParameter(default=0, description="0: let the provider decide")
    expected_completion_tokens = luigi.IntParameter(
        default=1000, description="daydream plan's cost estimate: tokens per completion; 0: use max_tokens")
    local_max_tokens = luigi.IntParameter(default=160)
    local_threads = luigi.IntParameter(default=2)
    rpm_llm_free = luigi.IntParameter(default=0, description="requests per minute for :free models; 0: no limit")
    rpm_llm_paid = luigi.IntParameter(default=0, description="requests per minute for paid models; 0: no limit")
    claim_lease_s = luigi.FloatParameter(default=60.0, description="lease of a generation's claim; renewed every third of it")
