"""How batches of rows travel between steps: Arrow tables and record batches, numpy arrays, and tuples of
them, pickled as Beam's default coder pickles them, with their size estimated from their buffers.

Beam estimates the size of every element it passes between steps (all of the first ten on each edge,
then a sample) by encoding it, and its default coder pickles an object it does not know: for a batch of
100,000 rows that is tens of megabytes copied per edge only to be measured. The columnar pipelines pass
few, large elements, so they declare these types (`.with_output_types`) and get this coder instead."""

import pickle

import numpy as np
import pyarrow as pa
from apache_beam import coders
from apache_beam.coders import coder_impl


def columnar_nbytes(value):
    """The bytes held by an element: its Arrow tables' and numpy arrays' buffers, summed over tuples."""
    if isinstance(value, tuple):
        return sum(columnar_nbytes(v) for v in value)
    if isinstance(value, (pa.Table, pa.RecordBatch)):
        return value.get_total_buffer_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (str, bytes)):
        return len(value)
    return 8


class ColumnarCoder(coders.Coder):
    """Pickle (protocol 5) for elements made of Arrow tables and numpy arrays; size from columnar_nbytes."""

    def encode(self, value):
        return pickle.dumps(value, protocol=5)

    def decode(self, encoded):
        return pickle.loads(encoded)

    def is_deterministic(self):
        return False

    def _create_impl(self):
        return coder_impl.CallbackCoderImpl(self.encode, self.decode, columnar_nbytes)

    def to_type_hint(self):
        return object


for _type in (pa.Table, pa.RecordBatch):
    coders.registry.register_coder(_type, ColumnarCoder)


def register_columnar(cls):
    """Class decorator: elements of `cls` (a NamedTuple of tables and arrays) travel by ColumnarCoder."""
    coders.registry.register_coder(cls, ColumnarCoder)
    return cls
