"""Each pipeline declared: its settings (the DAG's Params) and its steps. Light: DAG files import these."""
