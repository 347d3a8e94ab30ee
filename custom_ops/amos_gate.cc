// The AMOS spiking gate as a fused onnxruntime CPU kernel: op "AmosGate" in domain "amos".
//
// Same node, attributes and float32 arithmetic as the model-local function the
// converter writes (amos_onnx/emit.py), so outputs are bit-identical:
//
//   v = x; y = 0
//   for t in 0..K-1:  z = v > T[t];  y = z ? y + d[t] : y;  v = z ? v - h[t] : v   (h[K-1] unused)
//
// Attributes: k (int), thresholds, resets, weights (floats, K or C*K values),
// axis (int, only for per-channel gates: parameters for channel c are [c*K, c*K+K)),
// chains (int, only for shared gates: that many circuits of K neurons side by side, parameters for chain c
// at [c*K, c*K+K), each run from x with its own y, the chains' y added in chain order: ((y_1 + y_2) + ...)).
// Inputs: x (float32, any shape). Outputs: y (float32, x's shape) and, optional,
// spikes (int32, x's shape: how many of the K neurons fired for each element).
// NaN inputs fire nothing (y = 0); +inf fires every neuron; -inf fires none.
// Attribute problems are reported when the session is created, as an onnxruntime error.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr int64_t kMaxK = 64;            // amos_onnx.neuron.MAX_K
constexpr int64_t kBlock = 1024;         // elements processed together (vectorised over them)
constexpr int64_t kTaskElements = 16384; // elements per thread-pool task

struct GateParams {
  int64_t k = 0;
  int64_t chains = 1;
  int64_t channels = 1;
  int64_t axis = -1;  // -1: one shared gate
  std::vector<float> thresholds, resets, weights;
  std::vector<float> thresholds_t, resets_t, weights_t;  // per-channel: the same as [K, C], for rows of channels
};

// One chain of K neurons over a block of m elements: acc gets the chain's output from x, count its spikes.
// Branch-free over the block, so gcc vectorises it (with -fno-trapping-math). With z in {0, 1}, acc + d*z and
// v - h*z equal the function form's Where(z, acc + d, acc) and Where(z, v - h, v) bit for bit: d*1 = d, and
// adding a zero leaves acc (never -0) unchanged; parameters are finite.
template <bool kCountSpikes>
__attribute__((always_inline)) inline void run_chain(const float* x, float* v, float* acc, int32_t* count, int64_t m,
                                                     const float* T, const float* h, const float* d, int64_t k) {
  for (int64_t i = 0; i < m; ++i) {
    v[i] = x[i];
    acc[i] = 0.0f;
  }
  for (int64_t t = 0; t + 1 < k; ++t) {
    const float threshold = T[t], weight = d[t], reset = h[t];
    for (int64_t i = 0; i < m; ++i) {
      const float z = v[i] > threshold ? 1.0f : 0.0f;
      acc[i] += weight * z;
      v[i] -= reset * z;
      if (kCountSpikes) count[i] += static_cast<int32_t>(z);
    }
  }
  const float threshold = T[k - 1], weight = d[k - 1];  // the last neuron: its reset is never used
  for (int64_t i = 0; i < m; ++i) {
    const float z = v[i] > threshold ? 1.0f : 0.0f;
    acc[i] += weight * z;
    if (kCountSpikes) count[i] += static_cast<int32_t>(z);
  }
}

// One run of elements that share a channel's parameters (or a shared gate's `chains` chains, one after another in
// T, h and d, their outputs added in chain order).
// Built for AVX2 and for the baseline; the loader picks what the CPU has.
template <bool kCountSpikes>
__attribute__((target_clones("avx2", "default"))) void run_gate(const float* x, float* y, int32_t* spikes, int64_t n,
                                                                 const float* T, const float* h, const float* d,
                                                                 int64_t k, int64_t chains) {
  float v[kBlock];
  float acc[kBlock];
  float total[kBlock];
  int32_t count[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t m = std::min(kBlock, n - start);
    for (int64_t i = 0; i < m; ++i) count[i] = 0;
    run_chain<kCountSpikes>(x + start, v, total, count, m, T, h, d, k);
    for (int64_t c = 1; c < chains; ++c) {
      run_chain<kCountSpikes>(x + start, v, acc, count, m, T + c * k, h + c * k, d + c * k, k);
      for (int64_t i = 0; i < m; ++i) total[i] += acc[i];
    }
    for (int64_t i = 0; i < m; ++i) y[start + i] = total[i];
    if (kCountSpikes)
      for (int64_t i = 0; i < m; ++i) spikes[start + i] = count[i];
  }
}

// Rows of `channels` elements whose channels lie on the last axis (element c of a row uses channel c's neuron
// t at Tt[t * channels + c]): the same operations per element as run_gate, vectorised across the channels.
template <bool kCountSpikes>
__attribute__((target_clones("avx2", "default"))) void run_rows(const float* x, float* y, int32_t* spikes,
                                                                 int64_t rows, int64_t channels, const float* Tt,
                                                                 const float* ht, const float* dt, int64_t k) {
  float v[kBlock];
  float acc[kBlock];
  int32_t count[kBlock];
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
      const int64_t m = std::min(kBlock, channels - c0), base = r * channels + c0;
      for (int64_t i = 0; i < m; ++i) {
        v[i] = x[base + i];
        acc[i] = 0.0f;
        count[i] = 0;
      }
      for (int64_t t = 0; t + 1 < k; ++t) {
        const float *T = Tt + t * channels + c0, *d = dt + t * channels + c0, *h = ht + t * channels + c0;
        for (int64_t i = 0; i < m; ++i) {
          const float z = v[i] > T[i] ? 1.0f : 0.0f;
          acc[i] += d[i] * z;
          v[i] -= h[i] * z;
          if (kCountSpikes) count[i] += static_cast<int32_t>(z);
        }
      }
      const float *T = Tt + (k - 1) * channels + c0, *d = dt + (k - 1) * channels + c0;
      for (int64_t i = 0; i < m; ++i) {
        const float z = v[i] > T[i] ? 1.0f : 0.0f;
        acc[i] += d[i] * z;
        if (kCountSpikes) count[i] += static_cast<int32_t>(z);
      }
      for (int64_t i = 0; i < m; ++i) y[base + i] = acc[i];
      if (kCountSpikes)
        for (int64_t i = 0; i < m; ++i) spikes[base + i] = count[i];
    }
  }
}

struct Work {
  const GateParams* params;
  const float* x;
  float* y;
  int32_t* spikes;
  int64_t total, inner, pieces;  // per-channel: runs of `inner` elements, each split into `pieces` tasks ...
  int64_t runs_per_task;          // ... or, for short runs (channels on the last axis), this many runs per task
};

void run_gate_on(const Work& w, int64_t start, int64_t end, int64_t channel) {
  const GateParams& p = *w.params;
  const int64_t off = channel * p.k;
  const float *T = p.thresholds.data() + off, *h = p.resets.data() + off, *d = p.weights.data() + off;
  if (w.spikes)
    run_gate<true>(w.x + start, w.y + start, w.spikes + start, end - start, T, h, d, p.k, p.chains);
  else
    run_gate<false>(w.x + start, w.y + start, nullptr, end - start, T, h, d, p.k, p.chains);
}

void run_task(void* data, size_t task) {
  const Work& w = *static_cast<const Work*>(data);
  const GateParams& p = *w.params;
  if (p.axis >= 0 && w.runs_per_task > 1 && w.inner == 1) {  // channels on the last axis: rows of channels
    const int64_t rows = w.total / p.channels, per = std::max<int64_t>(1, w.runs_per_task / p.channels);
    const int64_t first = static_cast<int64_t>(task) * per, last = std::min(rows, first + per);
    if (last <= first) return;
    const int64_t at = first * p.channels;
    if (w.spikes)
      run_rows<true>(w.x + at, w.y + at, w.spikes + at, last - first, p.channels, p.thresholds_t.data(),
                     p.resets_t.data(), p.weights_t.data(), p.k);
    else
      run_rows<false>(w.x + at, w.y + at, nullptr, last - first, p.channels, p.thresholds_t.data(),
                      p.resets_t.data(), p.weights_t.data(), p.k);
    return;
  }
  if (p.axis >= 0 && w.runs_per_task > 1) {
    const int64_t runs = w.total / std::max<int64_t>(1, w.inner);
    const int64_t first = static_cast<int64_t>(task) * w.runs_per_task;
    const int64_t last = std::min(runs, first + w.runs_per_task);
    for (int64_t run = first; run < last; ++run) run_gate_on(w, run * w.inner, run * w.inner + w.inner, run % p.channels);
    return;
  }
  int64_t start, end, channel = 0;
  if (p.axis < 0) {
    start = static_cast<int64_t>(task) * kTaskElements;
    end = std::min(w.total, start + kTaskElements);
  } else {
    const int64_t run = static_cast<int64_t>(task) / w.pieces, piece = static_cast<int64_t>(task) % w.pieces;
    channel = run % p.channels;
    start = run * w.inner + piece * kTaskElements;
    end = std::min(run * w.inner + w.inner, start + kTaskElements);
  }
  if (end <= start) return;
  run_gate_on(w, start, end, channel);
}

Ort::Status error(const std::string& message) { return Ort::Status(("AmosGate: " + message).c_str(), ORT_INVALID_ARGUMENT); }

struct AmosGateKernel {
  GateParams params;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    try {
      Ort::KernelContext ctx(raw);
      auto input = ctx.GetInput(0);
      const std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
      int64_t total = 1;
      for (int64_t dim : shape) total *= dim;
      Work w{&params, input.GetTensorData<float>(), nullptr, nullptr, total, total, 1, 1};
      if (params.axis >= 0) {
        if (params.axis >= static_cast<int64_t>(shape.size()))
          return error("axis " + std::to_string(params.axis) + " is out of range for an input of rank " +
                       std::to_string(shape.size())).release();
        if (shape[params.axis] != params.channels)
          return error("input has " + std::to_string(shape[params.axis]) + " channels on axis " +
                       std::to_string(params.axis) + ", the gate has " + std::to_string(params.channels)).release();
        w.inner = 1;
        for (size_t i = params.axis + 1; i < shape.size(); ++i) w.inner *= shape[i];
        w.pieces = std::max<int64_t>(1, (w.inner + kTaskElements - 1) / kTaskElements);
        if (w.pieces == 1) w.runs_per_task = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, w.inner));
      }
      w.y = ctx.GetOutput(0, shape).GetTensorMutableData<float>();
      if (ctx.GetOutputCount() > 1) {  // an omitted optional output (an empty name) comes back as no value
        Ort::UnownedValue spikes = ctx.GetOutput(1, shape);
        if (static_cast<OrtValue*>(spikes) != nullptr) w.spikes = spikes.GetTensorMutableData<int32_t>();
      }
      if (total == 0) return nullptr;
      const int64_t runs = total / std::max<int64_t>(1, w.inner);
      const int64_t rows_per_task = std::max<int64_t>(1, w.runs_per_task / params.channels);
      const int64_t tasks = params.axis < 0 ? (total + kTaskElements - 1) / kTaskElements
                            : w.runs_per_task > 1 && w.inner == 1 ? (runs / params.channels + rows_per_task - 1) /
                                                                        rows_per_task
                            : w.runs_per_task > 1 ? (runs + w.runs_per_task - 1) / w.runs_per_task
                                                  : runs * w.pieces;
      if (tasks <= 1) {
        for (int64_t t = 0; t < tasks; ++t) run_task(&w, static_cast<size_t>(t));
      } else {
        ctx.ParallelFor(run_task, static_cast<size_t>(tasks), 0, &w);
      }
      return nullptr;
    } catch (const Ort::Exception& exc) {
      return Ort::Status(exc).release();
    } catch (const std::exception& exc) {
      return error(exc.what()).release();
    }
  }
};

Ort::Status read_params(const OrtKernelInfo* raw, GateParams& p) {
  Ort::ConstKernelInfo info(raw);
  p.k = info.GetAttribute<int64_t>("k");
  const std::string node = info.GetNodeName();
  OrtStatus* chains_status = Ort::GetApi().KernelInfoGetAttribute_int64(raw, "chains", &p.chains);
  if (chains_status != nullptr) {
    Ort::GetApi().ReleaseStatus(chains_status);
    p.chains = 1;
  } else if (p.chains < 1) {
    return error("node '" + node + "': chains must be >= 1, got " + std::to_string(p.chains));
  }
  // a gate of several chains keeps its parameters under chain_* (amos_onnx/rewrite/emit.py, CHAIN_ATTRS)
  const std::string prefix = p.chains > 1 ? "chain_" : "";
  p.thresholds = info.GetAttributes<float>((prefix + "thresholds").c_str());
  p.resets = info.GetAttributes<float>((prefix + "resets").c_str());
  p.weights = info.GetAttributes<float>((prefix + "weights").c_str());
  if (p.k < 1 || p.k > kMaxK)
    return error("node '" + node + "': k = " + std::to_string(p.k) + " is outside 1.." + std::to_string(kMaxK));
  const std::pair<const char*, const std::vector<float>*> named[] = {
      {"thresholds", &p.thresholds}, {"resets", &p.resets}, {"weights", &p.weights}};
  for (const auto& [name, values] : named)  // an INTS attribute reads as no floats
    if (values->empty())
      return error("node '" + node + "': attribute '" + prefix + name +
                   "' must be a non-empty list of floats (FLOATS)");
  const size_t n = p.thresholds.size();
  if (p.resets.size() != n || p.weights.size() != n)
    return error("node '" + node + "': thresholds, resets and weights have different lengths (" + std::to_string(n) +
                 ", " + std::to_string(p.resets.size()) + ", " + std::to_string(p.weights.size()) + ")");
  if (n == 0 || n % p.k != 0)
    return error("node '" + node + "': " + std::to_string(n) + " parameters are not a multiple of k = " +
                 std::to_string(p.k));
  p.channels = static_cast<int64_t>(n) / p.k;
  if (p.chains > 1) {
    if (p.channels != p.chains)
      return error("node '" + node + "': chains = " + std::to_string(p.chains) + " of k = " + std::to_string(p.k) +
                   " neurons need " + std::to_string(p.chains * p.k) + " parameters, got " + std::to_string(n));
    p.channels = 1;
  }
  int64_t axis = -1;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(raw, "axis", &axis);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    axis = -1;
  } else if (axis < 0) {
    return error("node '" + node + "': axis must be >= 0, got " + std::to_string(axis));
  }
  if (axis >= 0 && p.chains > 1)
    return error("node '" + node + "': a gate of several chains is shared: it takes no axis");
  if (axis < 0 && p.channels != 1)
    return error("node '" + node + "': " + std::to_string(n) + " parameters for k = " + std::to_string(p.k) +
                 " need an axis attribute (per-channel gate)");
  p.axis = axis;
  for (const auto* values : {&p.thresholds, &p.resets, &p.weights})
    for (float value : *values)
      if (!std::isfinite(value)) return error("node '" + node + "': parameters must be finite");
  if (axis >= 0) {
    const std::pair<const std::vector<float>*, std::vector<float>*> pairs[] = {
        {&p.thresholds, &p.thresholds_t}, {&p.resets, &p.resets_t}, {&p.weights, &p.weights_t}};
    for (const auto& [from, to] : pairs) {
      to->resize(n);
      for (int64_t c = 0; c < p.channels; ++c)
        for (int64_t t = 0; t < p.k; ++t) (*to)[t * p.channels + c] = (*from)[c * p.k + t];
    }
  }
  return Ort::Status(nullptr);
}

// Both outputs have x's shape, as onnxruntime infers them through the function form's body: its graph optimisations
// rewrite on known shapes (a MatMul + Add after a gate fused into a Gemm, whose sums round differently), so both forms
// must show them the same shapes. Each dimension is copied as a number or a symbol (a symbol as an unknown number
// with its name: given as a number, onnxruntime lost the shapes after the gate); an unknown dimension gets a symbol
// of its own (written as -1 it would be the size -1: onnxruntime then refused models that fold a Shape or merge a
// declared shape after the gate). Nothing for an input of unknown rank; a failure to set the spike counts' shape
// (a node without that output) is ignored.
OrtStatusPtr ORT_API_CALL infer_shapes(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* input = nullptr;  // the context's own: not released here
  if (OrtStatus* status = api.ShapeInferContext_GetInputTypeShape(ctx, 0, &input)) return status;
  size_t rank = 0;
  if (OrtStatus* status = api.GetDimensionsCount(input, &rank)) return status;
  if (rank == 0) return nullptr;
  std::vector<int64_t> dims(rank);
  std::vector<const char*> symbols(rank, nullptr);
  if (OrtStatus* status = api.GetDimensions(input, dims.data(), rank)) return status;
  if (OrtStatus* status = api.GetSymbolicDimensions(input, symbols.data(), rank)) return status;
  std::vector<std::string> fresh(rank);
  static std::atomic<uint64_t> unknowns{0};
  for (size_t i = 0; i < rank; ++i) {
    if (symbols[i] == nullptr) symbols[i] = "";
    if (symbols[i][0] == '\0' && dims[i] < 0) {  // unknown: a name of its own (the number -1 would be a size)
      fresh[i] = "amos_unk_" + std::to_string(unknowns++);
      symbols[i] = fresh[i].c_str();
    }
    if (symbols[i][0] != '\0') dims[i] = -1;
  }
  for (size_t index = 0; index < 2; ++index) {
    OrtTensorTypeAndShapeInfo* out = nullptr;
    if (OrtStatus* status = api.CreateTensorTypeAndShapeInfo(&out)) return status;
    std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> made(
        out, [](OrtTensorTypeAndShapeInfo* p) { Ort::GetApi().ReleaseTensorTypeAndShapeInfo(p); });
    OrtStatus* status = api.SetTensorElementType(out, index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                                                  : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
    if (!status) status = api.SetDimensions(out, dims.data(), rank);
    if (!status) status = api.SetSymbolicDimensions(out, symbols.data(), rank);
    if (!status) status = api.ShapeInferContext_SetOutputTypeShape(ctx, index, out);
    if (status && index == 0) return status;
    if (status) api.ReleaseStatus(status);
  }
  return nullptr;
}

struct AmosGateOp : Ort::CustomOpBase<AmosGateOp, AmosGateKernel, true> {
  AmosGateOp() { OrtCustomOp::InferOutputShapeFn = infer_shapes; }
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    try {
      auto made = new AmosGateKernel();
      Ort::Status status = read_params(info, made->params);
      if (!status.IsOK()) {
        delete made;
        return status.release();
      }
      *kernel = made;
      return nullptr;
    } catch (const Ort::Exception& exc) {
      return error(std::string("missing or malformed attribute: ") + exc.what()).release();
    }
  }
  const char* GetName() const { return "AmosGate"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

const AmosGateOp kOp;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                            const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // the runtime is older than the headers: say so through the oldest API, register nothing
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest == nullptr ? nullptr
                             : oldest->CreateStatus(ORT_FAIL, ("AmosGate: this onnxruntime is older than the API "
                                                               "version " + std::to_string(ORT_API_VERSION) +
                                                               " the library was built for; update onnxruntime")
                                                                  .c_str());
  }
  Ort::InitApi(api);
  try {
    static Ort::CustomOpDomain domain{"amos"};
    static std::once_flag once;
    std::call_once(once, [] { domain.Add(&kOp); });
    Ort::UnownedSessionOptions(options).Add(domain);
    return nullptr;
  } catch (const Ort::Exception& exc) {
    return Ort::Status(exc).release();
  }
}
