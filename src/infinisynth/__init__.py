"""infinisynth: instruction-data synthesis stages (Infinite-Instruct, Infinity Instruct Subject).

The library holds pure stages over Arrow tables, the LLM client, storage and reports. DAG files in
``dags/`` only wire these together; nothing here needs a running scheduler.
"""

__version__ = "0.1.0"
