"""Builders: tasks, the multi-model training engine and build orchestration of model sets.

``python -m builders build --config configs/modelset500.yaml --zoo data/modelset500`` builds a
model set; :mod:`builders.engine` trains many models at once; :mod:`builders.tasks` holds the task
sets and their ground-truth relations; :mod:`builders.transfer` measures transfer affinity.
"""
