"""benchmarks: data, model zoo, teacher training, jobs, runner, tuning and the `dfkd` CLI."""
