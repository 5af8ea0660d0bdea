"""The staging memory of ATen's CUDA reductions (``gpu_reduce_kernel``), without a GPU.

A reduction whose outputs are too few to keep the GPU busy splits each output's inputs
across thread blocks ("global reduction"); the blocks then combine their partial results
through a staging buffer and count themselves through int semaphores. Both come from the
CUDA caching allocator for the duration of the call, after the outputs
(``gpu_reduce_kernel`` in ``aten/src/ATen/native/cuda/Reduce.cuh``)::

    buffer     = allocate(config.global_memory_size())
    semaphores = allocate(config.semaphore_size())

The launch configuration is a pure function of the reduction's ``TensorIterator`` (its
coalesced shape and byte strides, the number of reduced dimensions, the alignment of the
input's data pointer), of the accumulator's size (``sizeof(arg_t)``), of the kernel's
template arguments (``vt0``, ``input_vec_size``) and of three device properties. This
module ports, faithfully and in the source's order:

* from ``aten/src/ATen/TensorIterator.cpp``: ``compute_strides`` (broadcast dimensions get
  byte stride 0, which is how a reduction's output marks its reduced dimensions),
  ``reorder_dimensions`` (reduced dimensions first, then by increasing stride),
  ``coalesce_dimensions``, ``can_use_32bit_indexing``, ``get_dim_to_split`` and ``split``
  (a reduction addressing more than 2**31 bytes runs as several 32-bit sub-reductions);
* from ``Reduce.cuh``: ``ReduceConfig`` (``set_block_dimension``, ``split_input``,
  ``split_output``, ``grid``, ``global_memory_size``, ``semaphore_size``),
  ``get_output_vec_size``, ``setReduceConfig`` and the buffer logic of
  ``gpu_reduce_kernel`` (including the ``AccumulationBuffer`` that lives across the
  32-bit sub-reductions when the output cannot accumulate partial results itself).

Source followed: the ``Reduce.cuh`` shipped in the torch 2.11.0+cu130 wheel (git
70d99e99), what the H200 runs; its host-side code is identical in 2.13. Device: sm90 as on
the H200 (132 multiprocessors, 2048 threads per multiprocessor, warps of 32). Pure Python,
torch-free; :mod:`.reductions` maps operators onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: H200 (sm90) device properties that ``setReduceConfig`` reads
NUM_SMS = 132
MAX_THREADS_PER_SM = 2048
WARP_SIZE = 32
INT32_MAX = 2**31 - 1
MIN_VALUES_PER_THREAD = 16  # CUDA (ROCm: 128)
MAX_VALUES_PER_THREAD = 256
SEMAPHORE_BYTES = 4  # sizeof(int)
#: every CUDA allocation starts at a multiple of 512 bytes (the caching allocator's blocks)
BASE_ALIGNMENT = 512


@dataclass
class Iter:
    """The parts of a reduction ``TensorIterator`` the CUDA reduction reads.

    Operand 0 .. ``noutputs - 1`` are the outputs (byte stride 0 in reduced dimensions),
    the last one is the input. ``offsets`` are the operands' data-pointer offsets in bytes
    from a 512-byte-aligned allocation.
    """

    shape: list[int]
    strides: list[list[int]]
    offsets: list[int]
    noutputs: int
    #: whether the sub-reduction writes the final output (False after splitting a reduced
    #: dimension), and whether it accumulates into an earlier sub-reduction's result
    final_output: bool = True
    accumulate: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n

    def num_output_elements(self) -> int:
        n = 1
        for dim, size in enumerate(self.shape):
            if self.strides[0][dim] != 0 or size == 0:
                n *= size
        return n

    def num_reduce_dims(self) -> int:
        return sum(1 for s in self.strides[0] if s == 0)

    def can_use_32bit_indexing(self) -> bool:
        if self.numel() > INT32_MAX:
            return False
        for stride in self.strides:
            max_offset = 1 + sum((n - 1) * s for n, s in zip(self.shape, stride, strict=True))
            if max_offset > INT32_MAX:
                return False
        return True

    def is_dim_reduced(self, dim: int) -> bool:
        return any(self.strides[i][dim] == 0 and self.shape[dim] > 1 for i in range(self.noutputs))

    def get_dim_to_split(self) -> int:
        max_extent, dim_to_split = -1, -1
        for dim in range(self.ndim - 1, -1, -1):
            size = self.shape[dim]
            if size == 0:
                continue
            for stride in self.strides:
                extent = (size - 1) * abs(stride[dim])
                if extent > max_extent:
                    max_extent, dim_to_split = extent, dim
        return dim_to_split

    def narrow(self, dim: int, start: int, size: int) -> None:
        # A reduction's iterator is not re-coalesced after narrowing (``is_reduction_``).
        self.shape[dim] = size
        self.offsets = [o + s[dim] * start for o, s in zip(self.offsets, self.strides, strict=True)]

    def split(self, dim: int) -> Iter:
        """``TensorIteratorBase::split``: the first half as a new iterator, this one the rest."""
        copy = Iter(
            list(self.shape),
            [list(s) for s in self.strides],
            list(self.offsets),
            self.noutputs,
            self.final_output,
            self.accumulate,
        )
        overlaps = self.is_dim_reduced(dim)
        copy_size = self.shape[dim] // 2
        this_size = self.shape[dim] - copy_size
        copy.narrow(dim, 0, copy_size)
        copy.final_output = copy.final_output and not overlaps
        self.narrow(dim, copy_size, this_size)
        self.accumulate = self.accumulate or overlaps
        return copy


def build_iter(
    input_shape: list[int],
    input_strides: list[int],
    input_offset: int,
    input_itemsize: int,
    output_strides: list[int],
    output_itemsize: int,
    reduced: list[bool],
    noutputs: int = 1,
) -> Iter:
    """The reduction ``TensorIterator`` of ``make_reduction`` for one input.

    ``output_strides`` are the (element) strides of the output viewed with the input's rank
    (``review_reduce_result``: a reduced dimension has size 1 there), ``reduced`` the mask
    of reduced dimensions. The output is contiguous or as the meta kernel made it.
    """
    shape = list(input_shape)
    out_bytes = []
    for dim, size in enumerate(shape):
        # compute_strides: an operand of size 1 in a dimension of size > 1 broadcasts
        out_size = 1 if reduced[dim] else size
        if out_size == 1 and size != 1:
            out_bytes.append(0)
        else:
            out_bytes.append(output_strides[dim] * output_itemsize)
    in_bytes = [s * input_itemsize for s in input_strides]
    strides = [list(out_bytes) for _ in range(noutputs)] + [in_bytes]
    it = Iter(shape, strides, [0] * noutputs + [input_offset], noutputs)
    _reorder_dimensions(it)
    _coalesce_dimensions(it)
    return it


def _reorder_dimensions(it: Iter) -> None:
    ndim = it.ndim
    if ndim <= 1:
        return
    perm = list(range(ndim - 1, -1, -1))

    def should_swap(dim0: int, dim1: int) -> int:
        for arg, stride in enumerate(it.strides):
            stride0, stride1 = stride[dim0], stride[dim1]
            if arg < it.noutputs and (stride0 == 0) != (stride1 == 0):
                # move reduced dimensions to the front
                return 1 if stride1 == 0 else -1
            if stride0 == 0 or stride1 == 0:
                continue
            if stride0 < stride1:
                return -1
            if stride0 > stride1:
                return 1
            if it.shape[dim0] > it.shape[dim1]:
                return 1
        return 0

    for i in range(1, ndim):
        dim1 = i
        for dim0 in range(i - 1, -1, -1):
            comparison = should_swap(perm[dim0], perm[dim1])
            if comparison > 0:
                perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
                dim1 = dim0
            elif comparison < 0:
                break
    it.shape = [it.shape[p] for p in perm]
    it.strides = [[s[p] for p in perm] for s in it.strides]


def _coalesce_dimensions(it: Iter) -> None:
    if it.ndim <= 1:
        return
    shape, strides = it.shape, it.strides

    def can_coalesce(dim0: int, dim1: int) -> bool:
        if shape[dim0] == 1 or shape[dim1] == 1:
            return True
        return all(shape[dim0] * s[dim0] == s[dim1] for s in strides)

    def replace_stride(dim0: int, dim1: int) -> None:
        for s in strides:
            s[dim0] = s[dim1]

    prev = 0
    for dim in range(1, it.ndim):
        if can_coalesce(prev, dim):
            if shape[prev] == 1:
                replace_stride(prev, dim)
            shape[prev] *= shape[dim]
        else:
            prev += 1
            if prev != dim:
                replace_stride(prev, dim)
                shape[prev] = shape[dim]
    del shape[prev + 1 :]
    for s in strides:
        del s[prev + 1 :]


def _last_pow2(n: int) -> int:
    n |= n >> 1
    n |= n >> 2
    n |= n >> 4
    n |= n >> 8
    n |= n >> 16
    return max(1, n - (n >> 1))


def _div_up(a: int, b: int) -> int:
    return (a + b - 1) // b


@dataclass
class ReduceConfig:
    """``ReduceConfig`` of ``Reduce.cuh`` (host side)."""

    element_size_bytes: int
    num_outputs: int
    num_inputs: int
    step_input: int = 1
    step_output: int = 1
    ctas_per_output: int = 1
    input_mult: list[int] = field(default_factory=lambda: [0, 0, 0])
    output_mult: list[int] = field(default_factory=lambda: [0, 0])
    block_width: int = 0
    block_height: int = 0
    num_threads: int = 0
    vectorize_input: bool = False
    output_vec_size: int = 1

    def set_block_dimension(self, dim0: int, dim1: int, max_threads: int) -> None:
        max_num_threads = max_threads // self.output_vec_size
        dim0_pow2 = _last_pow2(dim0) if dim0 < max_num_threads else max_num_threads
        dim1_pow2 = _last_pow2(dim1) if dim1 < max_num_threads else max_num_threads
        self.block_width = min(dim0_pow2, WARP_SIZE)
        self.block_height = min(dim1_pow2, max_num_threads // self.block_width)
        self.block_width = min(dim0_pow2, max_num_threads // self.block_height)
        self.num_threads = self.block_width * self.block_height

    def split_input(self, parallelism: int) -> int:
        step = self.step_input
        self.step_input *= parallelism
        return step

    def split_output(self, parallelism: int) -> int:
        step = self.step_output
        self.step_output *= parallelism
        return step

    def grid_x(self) -> int:
        return _div_up(self.num_outputs // self.output_vec_size, self.step_output)

    def values_per_thread(self) -> int:
        return _div_up(self.num_inputs, self.step_input)

    def should_global_reduce(self) -> bool:
        return self.input_mult[2] != 0

    def should_block_x_reduce(self) -> bool:
        return self.input_mult[0] != 0

    def global_memory_size(self) -> int:
        if not self.should_global_reduce():
            return 0
        size = self.element_size_bytes * self.num_outputs * self.ctas_per_output
        if not self.should_block_x_reduce():
            size *= self.block_width * self.output_vec_size
        return size

    def semaphore_size(self) -> int:
        if not self.should_global_reduce():
            return 0
        return SEMAPHORE_BYTES * self.grid_x()


def _output_vec_size(it: Iter, scalar_size: int) -> int:
    vec_size = 4

    def update(n: int) -> None:
        nonlocal vec_size
        while n % vec_size != 0:
            vec_size //= 2

    update((BASE_ALIGNMENT + it.offsets[it.noutputs]) // scalar_size)
    output_index = it.num_reduce_dims()
    update(it.shape[output_index])
    for j, stride in enumerate(it.strides[it.noutputs]):
        if j != output_index:
            update(stride // scalar_size)
    return vec_size


def set_reduce_config(
    it: Iter, arg_size: int, scalar_size: int, input_vec_size: int, max_threads: int = 512
) -> ReduceConfig:
    """``setReduceConfig<arg_t, scalar_t, vt0, input_vec_size>`` on the H200."""
    num_outputs = it.num_output_elements()
    inputs_per_output = it.numel() // num_outputs
    inp = it.strides[-1]
    config = ReduceConfig(arg_size, num_outputs, inputs_per_output)
    nred = it.num_reduce_dims()
    if it.ndim > 0:
        fastest = nred == it.ndim or inp[0] < inp[nred]
        if fastest:
            dim0, dim1, fastest_stride = inputs_per_output, num_outputs, inp[0]
        else:
            dim0, dim1, fastest_stride = num_outputs, inputs_per_output, inp[nred]
    else:
        fastest, fastest_stride, dim0, dim1 = True, scalar_size, 1, 1
    if fastest_stride == scalar_size:
        if fastest and dim0 >= 128 and nred == 1:
            config.vectorize_input = True
            dim0 //= input_vec_size
        elif not fastest:
            config.output_vec_size = _output_vec_size(it, scalar_size)
            dim0 //= config.output_vec_size
    config.set_block_dimension(dim0, dim1, max_threads)
    block_width, block_height = config.block_width, config.block_height
    if it.ndim == 0 or fastest:
        config.input_mult[0] = config.split_input(block_width)
    else:
        config.output_mult[0] = config.split_output(block_width)
    warp_split_threshold = min(block_height * 16, MAX_VALUES_PER_THREAD)
    if config.values_per_thread() >= warp_split_threshold:
        config.input_mult[1] = config.split_input(block_height)
    else:
        config.output_mult[1] = config.split_output(block_height)
    blocks_per_sm = MAX_THREADS_PER_SM // config.num_threads
    target_grid_size = NUM_SMS * blocks_per_sm
    grid = config.grid_x()
    if (
        config.input_mult[1] != 0
        and config.values_per_thread() >= MAX_VALUES_PER_THREAD
        and grid <= target_grid_size
    ):
        ctas_per_output1 = _div_up(target_grid_size, grid)
        ctas_per_output2 = _div_up(config.values_per_thread(), MIN_VALUES_PER_THREAD)
        ctas_per_output3 = _div_up(config.values_per_thread(), MAX_VALUES_PER_THREAD)
        config.ctas_per_output = max(min(ctas_per_output1, ctas_per_output2), ctas_per_output3)
        if config.ctas_per_output > 1:
            config.input_mult[2] = config.split_input(config.ctas_per_output)
    return config


def _split_32bit(it: Iter) -> list[Iter]:
    """``TensorIteratorBase::with_32bit_indexing``: the sub-iterators, in launch order."""
    if it.can_use_32bit_indexing():
        return [it]
    leaves: list[Iter] = []
    stack = [it]
    while stack:
        top = stack.pop()
        while not top.can_use_32bit_indexing():
            stack.append(top)
            top = top.split(top.get_dim_to_split())
        leaves.append(top)
    return leaves


def gpu_reduce_buffers(
    it: Iter,
    arg_size: int,
    scalar_size: int,
    input_vec_size: int,
    can_accumulate_in_output: bool,
    out_itemsize: int,
    max_threads: int = 512,
) -> list[int]:
    """Byte sizes ``gpu_reduce_kernel`` allocates for ``it``, in its order, as one call.

    The staging buffer and the semaphores of a sub-reduction are freed when it returns, so
    of several 32-bit sub-reductions only the largest pair is live at once; it is listed
    after the accumulation buffer that spans them all. ``max_threads`` is
    ``mnt_wrapper<scalar_t>::MAX_NUM_THREADS`` (256 for complex128, else 512).
    """
    if it.numel() == 0:
        return []
    sizes: list[int] = []
    if not can_accumulate_in_output and not it.can_use_32bit_indexing():
        output_memory_size = out_itemsize
        for dim in range(it.ndim):
            output_memory_size = max(output_memory_size, it.shape[dim] * it.strides[0][dim])
        sizes.append(output_memory_size // out_itemsize * arg_size)
    best = (0, 0)
    for sub in _split_32bit(it):
        config = set_reduce_config(sub, arg_size, scalar_size, input_vec_size, max_threads)
        pair = (config.global_memory_size(), config.semaphore_size())
        if _rounded(pair) > _rounded(best):
            best = pair
    sizes.extend(n for n in best if n)
    return sizes


def _rounded(pair: tuple[int, int]) -> int:
    return sum(-(-n // 512) * 512 for n in pair if n)
