"""Task bodies of each DAG: what a TaskFlow task calls, with plain arguments and small returns."""
