"""What tests, benchmarks and the demo need around synthetic worlds: world directories, STAC servers on loopback.

Beside the product, like `synthetic/`: it imports the product, and nothing in the product imports it.
"""
