"""The data error type: every message names the dataset, the row and the field that is wrong (and, where the
readers know it, the data file that holds the row)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. `str()` reads "dataset <dataset>, row <row>, field <field>: <message> (in <file>)"."""

    def __init__(self, message: str, dataset: str | None = None, row: int | None = None, field: str | None = None,
                 file: str | None = None):
        self.dataset, self.row, self.field, self.detail, self.file = dataset, row, field, message, file
        where = []
        if dataset is not None:
            where.append(f"dataset {dataset!r}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        text = f"{', '.join(where)}: {message}" if where else message
        super().__init__(f"{text} (in {file})" if file is not None else text)

    def located(self, file: str) -> DataError:
        """The same error, naming the data file (and the row's place in it) that holds the row."""
        return DataError(self.detail, self.dataset, self.row, self.field, file)
