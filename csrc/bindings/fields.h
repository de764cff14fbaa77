// The kernels' argument structs as Python objects with named, typed fields. Each struct has one table
// (module.cpp) that names every member once — DIFFRT_FIELD(S, eta, required) — so a field's Python name
// and the member it writes cannot disagree; the table drives the Python type's descriptors, its keyword
// constructor and repr, the check that every required field was set, and echo(). Python never passes a
// field by position.
//
// Field types at the seam: pointers are integer addresses (tensor.data_ptr(), 0 for none), sizes and
// strides ints, scalars floats, flags bools, enums the _C enum types (an int is refused), per-sample
// `const double*` arrays lists of floats, HeadStrides 3-tuples of ints.
#pragma once
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "common.h"

namespace diffrt::binding {

namespace py = pybind11;

// ---- the one pointer helper and the one dtype checker ------------------------------------------

template <typename P>
P* pointer(uintptr_t address) {
  return reinterpret_cast<P*>(address);
}
template <typename P>
uintptr_t address(P* p) {
  return reinterpret_cast<uintptr_t>(p);
}

enum class Device { cpu, cuda };

// Float32 and bfloat16 run everywhere; float16 only on the CUDA kernels.
inline void check_dtype(const char* op, DType dtype, Device device) {
  const bool ok = dtype == DType::f32 || dtype == DType::bf16 || (dtype == DType::f16 && device == Device::cuda);
  if (!ok)
    throw std::invalid_argument(std::string(op) + (device == Device::cuda ? ": the CUDA" : ": the CPU") +
                                " kernels do not take dtype code " + std::to_string(int(dtype)));
}

// ---- conversions of one field value ---------------------------------------------------------------

// A value of the wrong type for its field; the caller prefixes "<Struct>.<field>: ".
struct FieldError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void wrong_type(PyObject* v, const char* expected) {
  throw FieldError(std::string("expected ") + expected + ", got " + Py_TYPE(v)->tp_name);
}

inline bool is_int(PyObject* v) { return PyLong_Check(v) && !PyBool_Check(v); }

template <typename T, typename = void>
struct Convert;

template <>
struct Convert<int64_t> {
  static int64_t from(PyObject* v) {
    if (!is_int(v)) wrong_type(v, "an int");
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) throw FieldError("expected an int in the int64 range");
    return x;
  }
  static py::object to(int64_t x) { return py::int_(x); }
};

template <>
struct Convert<int> {  // num_threads: set by the launch, only read back
  static py::object to(int x) { return py::int_(x); }
};

template <>
struct Convert<double> {
  static double from(PyObject* v) {
    if (PyFloat_Check(v)) return PyFloat_AS_DOUBLE(v);
    if (!is_int(v)) wrong_type(v, "a float");
    const double x = PyLong_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    return x;
  }
  static py::object to(double x) { return py::float_(x); }
};

template <>
struct Convert<float> {
  static float from(PyObject* v) { return float(Convert<double>::from(v)); }
  static py::object to(float x) { return py::float_(double(x)); }
};

template <>
struct Convert<bool> {
  static bool from(PyObject* v) {
    if (!PyBool_Check(v)) wrong_type(v, "a bool");
    return v == Py_True;
  }
  static py::object to(bool x) { return py::bool_(x); }
};

template <typename E>
struct Convert<E, std::enable_if_t<std::is_enum_v<E>>> {  // DType, Prediction, ClipMode: their _C enum type only
  static E from(PyObject* v) {
    for (const auto& [member, value] : members())  // the class attributes ops passes: no type lookup
      if (member == v) return value;
    try {
      return py::cast<E>(py::handle(v));
    } catch (const py::cast_error&) {
    }
    wrong_type(v, ("diffrt._C." + std::string(py::str(enum_type().attr("__name__")))).c_str());
  }
  static py::object to(E x) { return py::cast(x); }

 private:
  static py::type enum_type() { return py::type::of(py::cast(E{})); }
  static const std::vector<std::pair<PyObject*, E>>& members() {
    static const std::vector<std::pair<PyObject*, E>> cache = [] {
      std::vector<std::pair<PyObject*, E>> m;
      for (auto item : py::dict(enum_type().attr("__members__")))  // owned by the class, alive with the module
        m.emplace_back(item.second.ptr(), item.second.template cast<E>());
      return m;
    }();
    return cache;
  }
};

template <typename P>
struct Convert<P*> {  // an address: tensor.data_ptr(), 0 for none
  static P* from(PyObject* v) {
    if (!is_int(v)) wrong_type(v, "an int address (tensor.data_ptr(), 0 for none)");
    const unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
      PyErr_Clear();
      throw FieldError("expected an address in [0, 2**64)");
    }
    return pointer<P>(uintptr_t(x));
  }
  static py::object to(P* p) { return py::int_(address(p)); }
};

template <>
struct Convert<HeadStrides> {  // (batch, head, row) element strides
  static HeadStrides from(PyObject* v) {
    if (!(PyTuple_Check(v) || PyList_Check(v)) || PySequence_Fast_GET_SIZE(v) != 3)
      wrong_type(v, "3 strides (batch, head, row)");
    PyObject** s = PySequence_Fast_ITEMS(v);
    return HeadStrides{Convert<int64_t>::from(s[0]), Convert<int64_t>::from(s[1]), Convert<int64_t>::from(s[2])};
  }
  static py::object to(const HeadStrides& s) { return py::make_tuple(s.batch, s.head, s.row); }
};

inline std::vector<double> per_sample_values(PyObject* v) {
  if (!(PyTuple_Check(v) || PyList_Check(v))) wrong_type(v, "a list of per-sample floats");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
  PyObject** items = PySequence_Fast_ITEMS(v);
  std::vector<double> values(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) values[size_t(i)] = Convert<double>::from(items[i]);
  return values;
}

// ---- the tables -------------------------------------------------------------------------------------

// required: Python must give it. optional: a nullable pointer (default 0) or an optional per-sample list
// (default empty). derived: computed from the others before the kernel runs. launch: num_threads.
enum class Role { required, optional, derived, launch };

constexpr int kMaxPerSample = 3;

// The Python object behind `<Struct>`: the struct as Python set it, plus the storage of its per-sample
// arrays (their pointers are set when a kernel call copies it).
template <typename S>
struct Bound {
  S args{};
  std::array<std::vector<double>, kMaxPerSample> per_sample;
  uint64_t given = 0;  // bit i: field i of the table was set
};

// What a kernel reads: a copy of the Bound (so Python may change or drop it while the kernel runs
// without the GIL), its per-sample pointers set and its derived fields computed.
template <typename S>
struct KernelCall {
  S args{};
  std::array<std::vector<double>, kMaxPerSample> per_sample;
};

template <typename S>
struct Field {
  const char* name;
  Role role;
  void (*set)(Bound<S>&, PyObject*);          // required / optional fields
  py::object (*get)(const Bound<S>&);          // the value as Python set it
  void (*attach)(KernelCall<S>&);              // per-sample arrays: check the length, set the pointer
  py::object (*seen)(const S&);                 // the value in the struct the kernel reads
  PyObject* interned = nullptr;                 // the name, for matching keyword names by identity
};

template <auto Member>
struct MemberOf;
template <typename S, typename T, T S::*M>
struct MemberOf<M> {
  using Struct = S;
  using Type = T;
};

template <auto M, Role R>
Field<typename MemberOf<M>::Struct> field(const char* name) {
  using S = typename MemberOf<M>::Struct;
  using T = typename MemberOf<M>::Type;
  Field<S> f{name, R, nullptr, nullptr, nullptr, [](const S& a) { return Convert<T>::to(a.*M); }};
  if constexpr (R == Role::required || R == Role::optional) {
    f.set = [](Bound<S>& b, PyObject* v) { b.args.*M = Convert<T>::from(v); };
    f.get = [](const Bound<S>& b) { return Convert<T>::to(b.args.*M); };
  }
  return f;
}

// A `const double*` of one value per sample (a.batch of them), kept in Bound::per_sample[Slot].
template <auto M, Role R, int Slot>
Field<typename MemberOf<M>::Struct> per_sample(const char* name) {
  using S = typename MemberOf<M>::Struct;
  static_assert(std::is_same_v<typename MemberOf<M>::Type, const double*> && Slot < kMaxPerSample);
  static_assert(R == Role::required || R == Role::optional);
  return Field<S>{
      name, R,
      [](Bound<S>& b, PyObject* v) { b.per_sample[Slot] = per_sample_values(v); },
      [](const Bound<S>& b) -> py::object { return py::cast(b.per_sample[Slot]); },
      [](KernelCall<S>& c) {
        const std::vector<double>& v = c.per_sample[Slot];
        if (v.empty() && R == Role::optional) {
          c.args.*M = nullptr;
          return;
        }
        if (int64_t(v.size()) != c.args.batch)
          throw FieldError("must hold one value per sample (batch = " + std::to_string(c.args.batch) + "), got " +
                           std::to_string(v.size()));
        c.args.*M = v.data();
      },
      [](const S& a) -> py::object {
        if (a.*M == nullptr) return py::none();
        return py::cast(std::vector<double>(a.*M, a.*M + a.batch));
      }};
}

#define DIFFRT_FIELD(S, member, role) ::diffrt::binding::field<&S::member, ::diffrt::binding::Role::role>(#member)
#define DIFFRT_PER_SAMPLE(S, member, role, slot) \
  ::diffrt::binding::per_sample<&S::member, ::diffrt::binding::Role::role, slot>(#member)

// Spec<S> (module.cpp) gives each struct: name (the Python type), fields() (the table, every member of S
// once) and complete(S&, Device) (dtype check, derived fields, rules across fields).
template <typename S>
struct Spec;

template <typename S>
const std::vector<Field<S>>& table() {
  static const std::vector<Field<S>> fields = [] {
    std::vector<Field<S>> f = Spec<S>::fields();
    if (f.size() > 64) throw std::logic_error("Bound::given holds 64 fields");
    for (Field<S>& x : f) x.interned = PyUnicode_InternFromString(x.name);  // kept for the process
    return f;
  }();
  return fields;
}

template <typename S>
std::string qualified(const Field<S>& f) {
  return std::string(Spec<S>::name) + "." + f.name;
}

template <typename S>
void set_field(Bound<S>& b, size_t i, PyObject* value) {
  const Field<S>& f = table<S>()[i];
  if (!f.set)
    throw py::type_error(qualified(f) + (f.role == Role::launch ? " is set by the launch (num_threads, or device and stream)"
                                                                 : " is derived from the other fields"));
  if (!value) throw py::type_error(qualified(f) + " cannot be deleted");
  try {
    f.set(b, value);
  } catch (const FieldError& e) {
    throw py::type_error(qualified(f) + ": " + e.what());
  }
  b.given |= uint64_t(1) << i;
}

template <typename S>
size_t field_index(PyObject* name) {
  const auto& fields = table<S>();
  for (size_t i = 0; i < fields.size(); ++i)
    if (fields[i].interned == name) return i;
  for (size_t i = 0; i < fields.size(); ++i)
    if (PyUnicode_CompareWithASCIIString(name, fields[i].name) == 0) return i;
  throw py::type_error(std::string(Spec<S>::name) + " has no field '" + std::string(py::str(name)) + "'");
}

// Runs f() and turns a C++ exception into the Python error it stands for (nullptr / -1 returned).
template <typename F>
auto guarded(F&& f) noexcept -> decltype(f()) {
  try {
    return f();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const py::builtin_exception& e) {
    e.set_error();
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  if constexpr (std::is_pointer_v<decltype(f())>)
    return nullptr;
  else
    return -1;
}

// ---- the Python type of each struct -----------------------------------------------------------------
// A C type with one descriptor per field (tp_getset): `args.eta = 0.3` converts and stores straight into
// the struct, ~25 ns a field. (pybind11 properties cost ~90 ns each, which would add ~1.5 µs to a DDIM
// step's 20 fields.) `<Struct>(**fields)` sets fields by keyword too.

template <typename S>
struct ArgsObject {
  PyObject_HEAD
  Bound<S> bound;
};

template <typename S>
PyTypeObject*& type_of() {
  static PyTypeObject* type = nullptr;
  return type;
}

template <typename S>
Bound<S>& bound_of(PyObject* o) {
  if (Py_TYPE(o) != type_of<S>())
    throw py::type_error(std::string("expected diffrt._C.") + Spec<S>::name + ", got " + Py_TYPE(o)->tp_name);
  return reinterpret_cast<ArgsObject<S>*>(o)->bound;
}

template <typename S>
PyObject* args_new(PyTypeObject* type, PyObject*, PyObject*) {
  return guarded([&]() -> PyObject* {
    PyObject* self = type->tp_alloc(type, 0);
    if (!self) return nullptr;
    new (&reinterpret_cast<ArgsObject<S>*>(self)->bound) Bound<S>();
    return self;
  });
}

template <typename S>
void args_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  reinterpret_cast<ArgsObject<S>*>(self)->bound.~Bound<S>();
  type->tp_free(self);
  Py_DECREF(type);  // instances of a heap type hold a reference to it
}

template <typename S>
int args_init(PyObject* self, PyObject* args, PyObject* kwargs) {
  return guarded([&]() -> int {
    if (PyTuple_GET_SIZE(args) != 0)
      throw py::type_error(std::string(Spec<S>::name) + "() takes keyword arguments only (its fields)");
    Bound<S>& b = reinterpret_cast<ArgsObject<S>*>(self)->bound;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (kwargs && PyDict_Next(kwargs, &pos, &key, &value)) set_field(b, field_index<S>(key), value);
    return 0;
  });
}

template <typename S>
PyObject* args_get(PyObject* self, void* index) {
  return guarded([&]() -> PyObject* {
    const Bound<S>& b = reinterpret_cast<ArgsObject<S>*>(self)->bound;
    return table<S>()[reinterpret_cast<size_t>(index)].get(b).release().ptr();
  });
}

template <typename S>
int args_set(PyObject* self, PyObject* value, void* index) {
  return guarded([&]() -> int {
    set_field(reinterpret_cast<ArgsObject<S>*>(self)->bound, reinterpret_cast<size_t>(index), value);
    return 0;
  });
}

template <typename S>
PyObject* args_repr(PyObject* self) {
  return guarded([&]() -> PyObject* {
    const Bound<S>& b = reinterpret_cast<ArgsObject<S>*>(self)->bound;
    std::string s = std::string(Spec<S>::name) + "(";
    bool first = true;
    const auto& fields = table<S>();
    for (size_t i = 0; i < fields.size(); ++i) {
      if (!fields[i].get || !(b.given >> i & 1)) continue;
      s += (first ? "" : ", ") + std::string(fields[i].name) + "=" + std::string(py::repr(fields[i].get(b)));
      first = false;
    }
    return py::str(s + ")").release().ptr();
  });
}

// Creates type `Spec<S>::name` in module m: the fields Python sets as descriptors, `fields` (their names
// in the struct's order), keyword construction and a repr of the fields set.
template <typename S>
void bind_args(py::module_& m, const char* doc) {
  const auto& fields = table<S>();
  static std::vector<PyGetSetDef> getset;  // must outlive the type
  static const std::string qualified_name = std::string("diffrt._C.") + Spec<S>::name;
  py::list names;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (!fields[i].set) continue;
    names.append(fields[i].name);
    getset.push_back(PyGetSetDef{fields[i].name, &args_get<S>, &args_set<S>, nullptr, reinterpret_cast<void*>(i)});
  }
  getset.push_back(PyGetSetDef{nullptr, nullptr, nullptr, nullptr, nullptr});
  PyType_Slot slots[] = {{Py_tp_new, reinterpret_cast<void*>(&args_new<S>)},
                         {Py_tp_init, reinterpret_cast<void*>(&args_init<S>)},
                         {Py_tp_dealloc, reinterpret_cast<void*>(&args_dealloc<S>)},
                         {Py_tp_repr, reinterpret_cast<void*>(&args_repr<S>)},
                         {Py_tp_getset, getset.data()},
                         {Py_tp_doc, const_cast<char*>(doc)},
                         {0, nullptr}};
  PyType_Spec spec{qualified_name.c_str(), int(sizeof(ArgsObject<S>)), 0, Py_TPFLAGS_DEFAULT, slots};
  py::object type = py::reinterpret_steal<py::object>(PyType_FromSpec(&spec));
  if (!type) throw py::error_already_set();
  type.attr("fields") = py::tuple(names);
  type_of<S>() = reinterpret_cast<PyTypeObject*>(type.inc_ref().ptr());  // alive for the process
  m.add_object(Spec<S>::name, type);
}

// ---- from the Python object to the struct a kernel reads -----------------------------------------------

template <typename S>
uint64_t required_fields() {
  static const uint64_t mask = [] {
    uint64_t r = 0;
    const auto& fields = table<S>();
    for (size_t i = 0; i < fields.size(); ++i)
      if (fields[i].role == Role::required) r |= uint64_t(1) << i;
    return r;
  }();
  return mask;
}

// The one path shared by the CPU and CUDA kernel entries and by echo().
template <typename S>
void prepare(const Bound<S>& b, int num_threads, Device device, KernelCall<S>& call) {
  if (const uint64_t missing = required_fields<S>() & ~b.given) {
    size_t i = 0;
    while (!(missing >> i & 1)) ++i;
    throw py::type_error(qualified(table<S>()[i]) + " was not set");
  }
  call.args = b.args;
  call.per_sample = b.per_sample;
  call.args.num_threads = num_threads;
  for (const Field<S>& f : table<S>()) {
    if (!f.attach) continue;
    try {
      f.attach(call);
    } catch (const FieldError& e) {
      throw py::value_error(qualified(f) + " " + e.what());
    }
  }
  Spec<S>::complete(call.args, device);
}

// Every field of the struct as the kernel sees it (per-sample pointers read back as their values):
// what the sentinel test compares against what diffrt.ops set.
template <typename S>
py::dict echo(const Bound<S>& b, int num_threads) {
  KernelCall<S> call;
  prepare(b, num_threads, Device::cpu, call);
  py::dict out;
  for (const Field<S>& f : table<S>()) out[f.name] = f.seen(call.args);
  return out;
}

inline int int_arg(PyObject* v, const char* what) {
  if (!is_int(v)) throw py::type_error(std::string(what) + " must be an int, got " + Py_TYPE(v)->tp_name);
  const long x = PyLong_AsLong(v);
  if (x == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (x < INT32_MIN || x > INT32_MAX) throw py::value_error(std::string(what) + " is out of range");
  return int(x);
}

// `name` is the function's own name: the `self` its PyCFunction was created with (add_function).
inline void expect_args(PyObject* name, Py_ssize_t nargs, Py_ssize_t want, const char* signature) {
  if (nargs != want)
    throw py::type_error(std::string(py::str(name)) + signature + " takes " + std::to_string(want) +
                         " positional arguments, got " + std::to_string(nargs));
}

// `_C.<name>(args, num_threads)`: the CPU kernel, without the GIL. A vectorcall function (no dispatcher).
template <typename S, void (*Run)(const S&)>
PyObject* cpu_entry(PyObject* name, PyObject* const* argv, Py_ssize_t nargs) {
  return guarded([&]() -> PyObject* {
    expect_args(name, nargs, 2, "(args, num_threads)");
    KernelCall<S> call;
    prepare(bound_of<S>(argv[0]), int_arg(argv[1], "num_threads"), Device::cpu, call);
    {
      py::gil_scoped_release nogil;
      Run(call.args);
    }
    Py_RETURN_NONE;
  });
}

// Adds a raw vectorcall function to the module (its PyMethodDef must live as long as the module); the
// function receives its name as `self`, for its error messages.
inline void add_function(py::module_& m, PyMethodDef* def) {
  py::str name(def->ml_name);
  py::object f = py::reinterpret_steal<py::object>(PyCFunction_NewEx(def, name.ptr(), m.attr("__name__").ptr()));
  if (!f) throw py::error_already_set();
  m.add_object(def->ml_name, f);
}

template <typename S, void (*Run)(const S&)>
void def_cpu_kernel(py::module_& m, const char* name, const char* doc) {
  static PyMethodDef def{name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&cpu_entry<S, Run>)),
                         METH_FASTCALL, doc};
  add_function(m, &def);
}

}  // namespace diffrt::binding
