"""The data error type: every message names the dataset, the row and the field that is wrong."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. `str()` reads "<dataset> row <row> field <field>: <message>"."""

    def __init__(self, message: str, dataset: str | None = None, row: int | None = None, field: str | None = None):
        self.dataset, self.row, self.field, self.detail = dataset, row, field, message
        where = []
        if dataset is not None:
            where.append(f"dataset {dataset!r}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
