"""The paper's published numbers (arXiv 2503.24322, Table 1, identical in v1 and v2), exactly as
printed: accuracy %, mean ± s.e. over 3 seeds x 5 inference runs.

A leaf of data: the trainer quotes the row of the run it finished, the report and the results
tables print our runs beside these."""

from __future__ import annotations

Key = tuple[str, str, str]  # (method, embedding, dataset)

DATASETS = ("mnist", "cifar10", "cifar100")  # Table 1's columns, in its order


def _paper_rows() -> dict[Key, dict[str, tuple[float, float]]]:
    # One line per row of Table 1: (MNIST train, MNIST test, C10 train, C10 test, C100 train,
    # C100 test), each (mean, s.e.), copied from the paper.
    rows = {
        ("backprop", "one-hot"):   [(100.0, 0.0), (99.46, 0.06), (99.98, 0.01), (79.92, 0.14), (98.63, 1.34), (45.85, 2.07)],
        ("backprop", "learned"):   [(99.99, 0.0), (99.43, 0.03), (99.96, 0.02), (79.3, 0.52), (94.28, 7.43), (46.57, 0.87)],
        ("backprop", "prototype"): [(99.99, 0.01), (99.44, 0.05), (99.97, 0.01), (79.58, 0.44), (99.19, 0.71), (47.8, 0.19)],
        ("dt", "one-hot"):         [(99.92, 0.01), (99.47, 0.05), (95.02, 0.19), (79.25, 0.28), (84.97, 0.67), (45.93, 0.46)],
        ("dt", "learned"):         [(99.93, 0.01), (99.49, 0.04), (94.95, 0.09), (79.12, 0.37), (83.25, 0.39), (45.19, 0.22)],
        ("dt", "prototype"):       [(99.97, 0.0), (99.54, 0.04), (97.23, 0.11), (80.54, 0.2), (90.7, 0.14), (46.06, 0.25)],
        ("adjoint", "one-hot"):    [(98.7, 0.13), (98.62, 0.14), (70.64, 0.49), (66.78, 0.76), (26.72, 0.81), (25.03, 0.7)],
        ("ct", "one-hot"):         [(97.88, 0.61), (97.84, 0.71), (97.31, 0.84), (73.35, 0.55), (75.1, 3.43), (33.66, 0.5)],
        ("ct", "learned"):         [(97.7, 0.42), (97.7, 0.51), (94.88, 3.08), (71.77, 2.47), (74.22, 2.33), (33.99, 1.08)],
        ("ct", "prototype"):       [(97.18, 1.02), (97.17, 0.94), (86.2, 7.34), (66.54, 3.63), (40.88, 10.72), (21.31, 4.17)],
        ("fm", "one-hot"):         [(99.97, 0.0), (99.21, 0.09), (98.46, 0.4), (73.14, 0.9), (12.69, 10.4), (6.38, 4.9)],
        ("fm", "learned"):         [(99.99, 0.0), (99.29, 0.05), (99.49, 0.15), (73.5, 0.28), (83.49, 4.62), (31.14, 0.52)],
        ("fm", "prototype"):       [(99.27, 0.09), (98.52, 0.16), (99.8, 0.03), (75.18, 0.57), (96.37, 1.09), (37.57, 0.32)],
    }
    table = {}
    for (method, emb), v in rows.items():
        for i, ds in enumerate(DATASETS):
            table[(method, emb, ds)] = {"train": v[2 * i], "test": v[2 * i + 1]}
    return table


PAPER_TABLE1: dict[Key, dict[str, tuple[float, float]]] = _paper_rows()
