"""The synthetic world: terrain, glaciers and their change, sensor rendering, catalog.

Tests, the demo and the accuracy benchmarks stand on it, so it follows the real sensors' formats and
the physics that make glacier mapping hard (debris cover, calving fronts, seasonal snow, clouds).
"""
