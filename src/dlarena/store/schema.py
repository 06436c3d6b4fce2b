"""The results database schema, versioned, with forward migrations.

A database records its schema version in ``meta``. Opening an older one applies the missing
migrations in one transaction; opening a newer one is refused (its meaning is unknown to this code).
"""

from __future__ import annotations

SCHEMA_VERSION = 9

# MIGRATIONS[n] turns a database of version n into version n + 1; version 0 is an empty file.
MIGRATIONS: dict[int, str] = {
    0: """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE environments (
        id INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL UNIQUE,
        cpu_model TEXT NOT NULL,
        cores INTEGER NOT NULL,
        memory_bytes INTEGER NOT NULL,
        os TEXT NOT NULL,
        python TEXT NOT NULL,
        data TEXT NOT NULL                 -- the whole snapshot as JSON
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,              -- running, finished, interrupted
        suite_name TEXT NOT NULL,
        suite_version INTEGER NOT NULL,
        suite_source TEXT NOT NULL,        -- the TOML text the suite was read from
        argv TEXT NOT NULL,                -- JSON list: the command that started the run
        code_version TEXT NOT NULL,
        environment_id INTEGER NOT NULL REFERENCES environments(id)
    );
    CREATE TABLE cells (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(id),
        position INTEGER NOT NULL,         -- order within the run
        cell_key TEXT NOT NULL,            -- hash of configuration + code + framework versions
        framework TEXT NOT NULL,
        workload TEXT NOT NULL,
        scenario TEXT NOT NULL,
        device TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        threads INTEGER NOT NULL,
        precision TEXT NOT NULL,
        timeout_s REAL NOT NULL,
        config TEXT NOT NULL,              -- the cell as JSON, what the worker receives
        UNIQUE (run_id, position)
    );
    CREATE INDEX cells_by_key ON cells(cell_key);
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        cell_id INTEGER NOT NULL REFERENCES cells(id),
        status TEXT NOT NULL,              -- ok, failed, timeout, oom, unsupported, unavailable, mismatch
        message TEXT NOT NULL,
        stderr_tail TEXT NOT NULL,
        command TEXT NOT NULL,             -- JSON list: re-runs this cell by hand
        exit_code INTEGER,
        framework_version TEXT,
        params INTEGER,
        flops_per_step INTEGER,
        import_s REAL,
        build_s REAL,
        first_step_s REAL,
        cores_used REAL,                   -- process CPU time over wall time in the timed loop
        peak_rss_bytes INTEGER,
        wall_s REAL NOT NULL,              -- the whole worker process, start to end
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        parity TEXT NOT NULL,              -- JSON: what the framework really ran with
        data TEXT NOT NULL                 -- JSON: the worker's whole result
    );
    CREATE INDEX results_by_cell ON results(cell_id);
    CREATE TABLE samples (
        result_id INTEGER NOT NULL REFERENCES results(id),
        phase TEXT NOT NULL,               -- first, warmup, steady
        step INTEGER NOT NULL,
        seconds REAL NOT NULL,
        PRIMARY KEY (result_id, phase, step)
    ) WITHOUT ROWID;
    CREATE TABLE summaries (
        cell_id INTEGER PRIMARY KEY REFERENCES cells(id),
        n INTEGER NOT NULL,
        median_s REAL NOT NULL,
        mean_s REAL NOT NULL,
        stdev_s REAL NOT NULL,
        min_s REAL NOT NULL,
        max_s REAL NOT NULL,
        q1_s REAL NOT NULL,
        q3_s REAL NOT NULL,
        throughput REAL NOT NULL,          -- samples per second at the median
        gflops REAL                        -- achieved GFLOP/s at the median
    );
    """,
    1: """
    CREATE TABLE verifications (
        id INTEGER PRIMARY KEY,
        checked_at TEXT NOT NULL,
        framework TEXT NOT NULL,
        workload TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        status TEXT NOT NULL,              -- ok, mismatch, failed, timeout, oom, unsupported, unavailable
        message TEXT NOT NULL,
        framework_version TEXT,
        code_version TEXT NOT NULL,
        params INTEGER,
        forward_error REAL,                -- max relative error of the logits against the NumPy oracle
        loss_error REAL,                   -- relative error of the loss against the oracle
        gradient_error REAL,               -- max over parameters against the gradient reference
        gradient_reference TEXT,           -- the framework whose gradients were the reference
        worst_parameter TEXT,
        data TEXT NOT NULL                 -- JSON: everything else the check found
    );
    CREATE INDEX verifications_by_pair ON verifications(framework, workload);
    """,
    2: """
    ALTER TABLE runs ADD COLUMN repetitions INTEGER NOT NULL DEFAULT 1;  -- worker processes per cell
    ALTER TABLE results ADD COLUMN repetition INTEGER NOT NULL DEFAULT 0;  -- which process of the cell
    ALTER TABLE results ADD COLUMN memory_growth_bytes INTEGER;  -- resident memory, end of steady state - start
    ALTER TABLE summaries ADD COLUMN processes INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE summaries ADD COLUMN ci_low_s REAL;              -- bootstrap interval of the median
    ALTER TABLE summaries ADD COLUMN ci_high_s REAL;
    ALTER TABLE summaries ADD COLUMN p50_s REAL;                 -- step-time percentiles (latency for infer)
    ALTER TABLE summaries ADD COLUMN p90_s REAL;
    ALTER TABLE summaries ADD COLUMN p99_s REAL;
    ALTER TABLE summaries ADD COLUMN process_spread REAL;        -- largest process median / smallest - 1
    ALTER TABLE summaries ADD COLUMN import_s REAL;              -- medians over processes
    ALTER TABLE summaries ADD COLUMN build_s REAL;
    ALTER TABLE summaries ADD COLUMN first_step_s REAL;
    ALTER TABLE summaries ADD COLUMN cores_used REAL;
    ALTER TABLE summaries ADD COLUMN cpu_utilisation REAL;       -- cores used / cores allowed
    ALTER TABLE summaries ADD COLUMN peak_rss_bytes INTEGER;     -- the largest over processes
    ALTER TABLE summaries ADD COLUMN memory_growth_bytes INTEGER;
    ALTER TABLE summaries ADD COLUMN peak_gflops REAL;           -- the machine's peak at the cell's threads
    ALTER TABLE summaries ADD COLUMN peak_percent REAL;          -- gflops / peak_gflops, in percent
    ALTER TABLE summaries ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';  -- JSON list of sentences
    ALTER TABLE summaries ADD COLUMN data TEXT NOT NULL DEFAULT '{}';      -- JSON: the rest (GPU figures)
    CREATE TABLE peaks (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(id),
        environment_id INTEGER NOT NULL REFERENCES environments(id),
        threads INTEGER NOT NULL,
        gflops REAL NOT NULL,              -- best float32 matrix product through NumPy's BLAS
        matrix_size INTEGER NOT NULL,
        library TEXT NOT NULL,
        measured_at TEXT NOT NULL
    );
    CREATE INDEX peaks_by_run ON peaks(run_id);
    """,
    3: """
    ALTER TABLE runs ADD COLUMN resumes TEXT NOT NULL DEFAULT '[]';  -- JSON: when, command, what had changed
    ALTER TABLE runs ADD COLUMN memory_limit_bytes INTEGER;  -- a worker past it is killed as oom
    """,
    4: """
    ALTER TABLE cells ADD COLUMN repetitions INTEGER;  -- worker processes of this cell (NULL: the run's)
    CREATE TABLE epochs (                  -- the accuracy scenario, one row per trained epoch
        result_id INTEGER NOT NULL REFERENCES results(id),
        epoch INTEGER NOT NULL,            -- from 1
        train_s REAL NOT NULL,             -- training steps, each ended by a device sync
        data_s REAL NOT NULL,              -- drawing the epoch's batches
        eval_s REAL NOT NULL,              -- predicting the test set
        loss REAL NOT NULL,                -- mean training loss of the epoch
        test_accuracy REAL NOT NULL,
        PRIMARY KEY (result_id, epoch)
    ) WITHOUT ROWID;
    ALTER TABLE summaries ADD COLUMN accuracy REAL;          -- accuracy cells: trimmed mean over seeds
    ALTER TABLE summaries ADD COLUMN time_to_target_s REAL;  -- trimmed mean over the seeds that reached it
    """,
    5: """
    CREATE TABLE probe_results (           -- `dlarena capabilities`: one answer of one probe (dlarena/probes)
        id INTEGER PRIMARY KEY,
        checked_at TEXT NOT NULL,
        probe TEXT NOT NULL,
        framework TEXT NOT NULL,
        framework_version TEXT,
        code_version TEXT NOT NULL,
        environment_id INTEGER REFERENCES environments(id),
        outcome TEXT NOT NULL,             -- pass, fail, unsupported, unavailable, timeout, oom
        message TEXT NOT NULL,
        figures TEXT NOT NULL,             -- JSON: what a passing probe measured
        command TEXT NOT NULL,             -- JSON list: re-runs the probe by hand ('[]' for a host probe)
        wall_s REAL NOT NULL,
        stderr_tail TEXT NOT NULL
    );
    CREATE INDEX probe_results_by_pair ON probe_results(framework, probe);
    """,
    6: """
    ALTER TABLE runs ADD COLUMN target_ci REAL;        -- timing cells' target half-width (NULL or 0: fixed)
    ALTER TABLE runs ADD COLUMN max_processes INTEGER; -- their most processes (measure/repetitions.py)
    ALTER TABLE runs ADD COLUMN time_budget_s REAL;    -- no process beyond a pilot starts past it
    """,
    7: """
    -- the precision the verdict is about (frameworks/precision.py); every earlier verdict was float32's
    ALTER TABLE verifications ADD COLUMN precision TEXT NOT NULL DEFAULT 'float32';
    """,
    8: """
    -- runs across a cluster (orchestrate/ray_executor.py); NULL everywhere for a local run
    ALTER TABLE cells ADD COLUMN node TEXT;       -- the node the cell is pinned to (the same cells on every node)
    ALTER TABLE results ADD COLUMN node TEXT;     -- the node the process ran on
    ALTER TABLE results ADD COLUMN environment_id INTEGER REFERENCES environments(id);  -- that node's machine
    ALTER TABLE runs ADD COLUMN placement TEXT;   -- JSON: the node labels chosen and whether spread; NULL: local
    ALTER TABLE peaks ADD COLUMN node TEXT;       -- the node probed; NULL: the run's own machine
    """,
}
