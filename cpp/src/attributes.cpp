// Attribute columns and their filters (see attributes.h).
#include "evidex/attributes.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <shared_mutex>
#include <stdexcept>
#include <utility>

#include "evidex/errors.h"

namespace evidex {

namespace {

// Inlined into each caller, so it compiles to the caller's target's popcount.
__attribute__((always_inline)) inline std::size_t popcount_words(const std::uint64_t* w,
                                                                 std::size_t n) {
    std::size_t c = 0;
    for (std::size_t i = 0; i < n; ++i) c += static_cast<std::size_t>(__builtin_popcountll(w[i]));
    return c;
}

#if defined(__x86_64__) || defined(_M_X64)
// Baseline x86-64 has no popcnt instruction: the builtin becomes a library call of
// a dozen operations per word, ~7 us for a 200,000-slot set.
__attribute__((target("popcnt"))) std::size_t popcount_words_popcnt(const std::uint64_t* w,
                                                                    std::size_t n) {
    return popcount_words(w, n);
}
#endif

}  // namespace

std::size_t SlotSet::count() const {
#if defined(__x86_64__) || defined(_M_X64)
    static const bool popcnt = __builtin_cpu_supports("popcnt");
    if (popcnt) return popcount_words_popcnt(words_.data(), words_.size());
#endif
    return popcount_words(words_.data(), words_.size());
}

void SlotSet::intersect(const SlotSet& o) {
    for (std::size_t i = 0; i < words_.size(); ++i) words_[i] &= i < o.words_.size() ? o.words_[i] : 0;
}

void SlotSet::unite(const SlotSet& o) {
    for (std::size_t i = 0; i < words_.size() && i < o.words_.size(); ++i) words_[i] |= o.words_[i];
    clear_tail();  // o may be the larger set
}

void SlotSet::clear_tail() {
    if (size_ % 64 != 0) words_.back() &= (std::uint64_t{1} << (size_ % 64)) - 1;
}

void SlotSet::complement() {
    for (auto& w : words_) w = ~w;
    clear_tail();
}

namespace {

[[noreturn]] void corrupt(const std::string& what) {
    throw CorruptIndexError("invalid evidex index file: " + what);
}

bool valid_name(const std::string& name) {
    if (name.empty() || name.size() > kMaxAttrNameBytes) return false;
    const auto ok = [](char c, bool first) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
               (!first && ((c >= '0' && c <= '9') || c == '.' || c == '-'));
    };
    for (std::size_t i = 0; i < name.size(); ++i)
        if (!ok(name[i], i == 0)) return false;
    return true;
}

// A field's values sorted, with their slots: the posting lists of every value
// at once (an equality or a range is one binary search away). Values held by at
// least 1/64 of the slots also get a bitmap, so that an equality on a common tag
// (tenant == 7) costs a copy of words, not a bit set per member: at most 64 such
// values, so the bitmaps take at most 8 bytes per slot, as the column does.
template <class Key>
struct Sorted {
    std::vector<std::pair<Key, node_id>> pairs;
    std::vector<std::pair<Key, SlotSet>> dense;  // by value

    void build(const std::vector<Key>& column, const std::vector<std::uint8_t>& present) {
        pairs.reserve(column.size());
        for (std::size_t i = 0; i < column.size(); ++i)
            if (present[i]) pairs.emplace_back(column[i], static_cast<node_id>(i));
        std::sort(pairs.begin(), pairs.end());
        const std::size_t min_count = std::max<std::size_t>(64, column.size() / 64);
        for (std::size_t a = 0; a < pairs.size();) {
            std::size_t b = a;
            while (b < pairs.size() && pairs[b].first == pairs[a].first) ++b;
            if (b - a >= min_count) {
                SlotSet bits(column.size());
                for (std::size_t i = a; i < b; ++i) bits.set(pairs[i].second);
                dense.emplace_back(pairs[a].first, std::move(bits));
            }
            a = b;
        }
    }
    const SlotSet* bitmap(Key v) const {
        const auto it = std::lower_bound(dense.begin(), dense.end(), v,
                                         [](const auto& e, Key k) { return e.first < k; });
        return it != dense.end() && it->first == v ? &it->second : nullptr;
    }
    std::size_t bytes() const {
        std::size_t b = pairs.capacity() * sizeof(pairs[0]);
        for (const auto& d : dense) b += (d.second.size() + 63) / 64 * sizeof(std::uint64_t);
        return b;
    }
};

}  // namespace

struct AttributeStore::Field {
    std::string name;
    AttrType type = AttrType::Int;
    std::vector<std::int64_t> ints;  // per slot (type Int)
    std::vector<double> floats;      // per slot (type Float)
    std::vector<std::uint8_t> present;
    // Built on demand after a field stops changing (cache_mutex_); a change drops it.
    mutable std::shared_ptr<const Sorted<std::int64_t>> sorted_ints;
    mutable std::shared_ptr<const Sorted<double>> sorted_floats;
    mutable std::size_t scans = 0;  // column scans since the last change

    void resize(std::size_t slots) {
        if (type == AttrType::Int)
            ints.resize(slots, 0);
        else
            floats.resize(slots, 0.0);
        present.resize(slots, 0);
    }
    void changed() {
        sorted_ints.reset();
        sorted_floats.reset();
        scans = 0;
    }
};

AttributeStore::AttributeStore() = default;
AttributeStore::~AttributeStore() = default;

AttributeStore::Field* AttributeStore::find(const std::string& name) {
    for (auto& f : fields_)
        if (f->name == name) return f.get();
    return nullptr;
}

const AttributeStore::Field* AttributeStore::find(const std::string& name) const {
    for (const auto& f : fields_)
        if (f->name == name) return f.get();
    return nullptr;
}

std::vector<AttributeStore::FieldInfo> AttributeStore::fields() const {
    std::shared_lock<RwLock> lock(lock_);
    std::vector<FieldInfo> out;
    for (const auto& f : fields_) out.push_back({f->name, f->type});
    return out;
}

std::size_t AttributeStore::memory_bytes() const {
    std::shared_lock<RwLock> lock(lock_);
    std::lock_guard<std::mutex> cache(cache_mutex_);
    std::size_t bytes = owner_.capacity() * sizeof(label_t);
    for (const auto& f : fields_) {
        bytes += f->ints.capacity() * 8 + f->floats.capacity() * 8 + f->present.capacity();
        if (f->sorted_ints) bytes += f->sorted_ints->bytes();
        if (f->sorted_floats) bytes += f->sorted_floats->bytes();
    }
    return bytes;
}

bool AttributeStore::empty() const {
    std::shared_lock<RwLock> lock(lock_);
    return fields_.empty();
}

void AttributeStore::prepare(const std::vector<AttrColumn>& columns, std::size_t n) {
    std::unique_lock<RwLock> lock(lock_);
    std::size_t new_fields = 0;
    for (std::size_t c = 0; c < columns.size(); ++c) {
        const AttrColumn& col = columns[c];
        if (!valid_name(col.name))
            throw std::invalid_argument(
                "attribute name '" + col.name +
                "' is not valid: 1 to 64 characters, letters, digits, '_', '.', '-', not "
                "starting with a digit");
        for (std::size_t d = 0; d < c; ++d)
            if (columns[d].name == col.name)
                throw std::invalid_argument("attribute '" + col.name + "' is given twice");
        const std::size_t len = col.type == AttrType::Int ? col.ints.size() : col.floats.size();
        if (len != n)
            throw std::invalid_argument("attribute '" + col.name + "' has " + std::to_string(len) +
                                        " values for " + std::to_string(n) + " vectors");
        if (col.type == AttrType::Float)
            for (std::size_t i = 0; i < n; ++i)
                if (!std::isfinite(col.floats[i]))
                    throw std::invalid_argument("attribute '" + col.name +
                                                "' has a NaN or infinite value (row " +
                                                std::to_string(i) + ")");
        const Field* f = find(col.name);
        if (f == nullptr) {
            ++new_fields;
        } else if (f->type != col.type) {
            throw std::invalid_argument(
                "attribute '" + col.name + "' holds " +
                (f->type == AttrType::Int ? "integers" : "floats") + ", got " +
                (col.type == AttrType::Int ? "integers" : "floats"));
        }
    }
    if (fields_.size() + new_fields > kMaxAttrFields)
        throw std::invalid_argument("an index holds at most " + std::to_string(kMaxAttrFields) +
                                    " attribute fields");
    for (const AttrColumn& col : columns) {
        if (find(col.name) != nullptr) continue;
        auto f = std::make_unique<Field>();
        f->name = col.name;
        f->type = col.type;
        f->resize(owner_.size());
        fields_.push_back(std::move(f));
    }
}

void AttributeStore::grow(std::size_t slots) {
    if (owner_.size() >= slots) return;
    owner_.resize(slots, ~label_t{0});
    for (auto& f : fields_) f->resize(slots);
}

void AttributeStore::assign(const std::vector<AttrColumn>& columns, const std::size_t* rows,
                            const node_id* slots, const label_t* labels, std::size_t n) {
    std::unique_lock<RwLock> lock(lock_);
    std::size_t top = 0;
    for (std::size_t i = 0; i < n; ++i) top = std::max<std::size_t>(top, slots[i] + std::size_t{1});
    for (const AttrColumn& col : columns)
        if (find(col.name) == nullptr || find(col.name)->type != col.type)
            throw std::logic_error("attributes assigned without prepare()");
    grow(top);
    bool reused = false;
    for (std::size_t i = 0; i < n; ++i) {
        if (owner_[slots[i]] == labels[i]) continue;
        owner_[slots[i]] = labels[i];
        for (auto& f : fields_) {
            reused |= f->present[slots[i]] != 0;
            f->present[slots[i]] = 0;
        }
    }
    if (reused)
        for (auto& f : fields_) f->changed();
    for (const AttrColumn& col : columns) {
        Field* f = find(col.name);
        for (std::size_t i = 0; i < n; ++i) {
            if (col.type == AttrType::Int)
                f->ints[slots[i]] = col.ints[rows[i]];
            else
                f->floats[slots[i]] = col.floats[rows[i]];
            f->present[slots[i]] = 1;
        }
        f->changed();
    }
}

void AttributeStore::reassign_slot(node_id slot, label_t owner) {
    std::unique_lock<RwLock> lock(lock_);
    if (slot >= owner_.size()) return;  // never had values
    owner_[slot] = owner;
    for (auto& f : fields_) {
        if (!f->present[slot]) continue;
        f->present[slot] = 0;
        f->changed();
    }
}

namespace {

// A range's bounds: int fields inclusive [ilo, ihi]; float fields with open or
// closed ends.
bool below_lo(std::int64_t v, const FilterStep& s) { return v < s.ilo; }
bool above_hi(std::int64_t v, const FilterStep& s) { return v > s.ihi; }
bool below_lo(double v, const FilterStep& s) { return s.lo_open ? v <= s.lo : v < s.lo; }
bool above_hi(double v, const FilterStep& s) { return s.hi_open ? v >= s.hi : v > s.hi; }
template <class Key>
bool in_range(Key v, const FilterStep& s) {
    return !below_lo(v, s) && !above_hi(v, s);
}

// A leaf over one column: a scan while the column changes, the sorted view
// (built once, then binary searches) after it has been scanned a few times
// unchanged.
template <class Key>
void eval_leaf(const std::vector<Key>& column, const std::vector<std::uint8_t>& present,
               std::shared_ptr<const Sorted<Key>>& cache, std::size_t& scans, std::mutex& mu,
               const FilterStep& s, const std::vector<Key>& values, SlotSet& out) {
    const std::size_t n = std::min(out.size(), column.size());
    std::shared_ptr<const Sorted<Key>> sorted;
    {
        std::lock_guard<std::mutex> lock(mu);
        if (!cache && ++scans > 2) {
            auto built = std::make_shared<Sorted<Key>>();
            built->build(column, present);
            cache = std::move(built);
        }
        sorted = cache;
    }
    if (sorted) {
        using Iter = typename std::vector<std::pair<Key, node_id>>::const_iterator;
        auto emit = [&](Iter a, Iter b) {
            for (; a != b; ++a)
                if (a->second < n) out.set(a->second);
        };
        const auto& pairs = sorted->pairs;
        const node_id lo_id = 0, hi_id = ~node_id{0};
        if (s.op == FilterStep::Op::In) {
            for (const Key v : values) {
                if (const SlotSet* bits = sorted->bitmap(v)) {
                    out.unite(*bits);
                    continue;
                }
                emit(std::lower_bound(pairs.begin(), pairs.end(), std::make_pair(v, lo_id)),
                     std::upper_bound(pairs.begin(), pairs.end(), std::make_pair(v, hi_id)));
            }
        } else {
            const auto a = std::partition_point(pairs.begin(), pairs.end(),
                                                [&](const auto& e) { return below_lo(e.first, s); });
            const auto c = std::partition_point(
                a, pairs.end(), [&](const auto& e) { return !above_hi(e.first, s); });
            emit(a, c);
        }
        return;
    }
    if (s.op == FilterStep::Op::In) {
        if (values.size() == 1) {
            const Key v = values[0];
            for (std::size_t i = 0; i < n; ++i)
                if (present[i] && column[i] == v) out.set(i);
        } else {
            std::vector<Key> sorted_values(values);
            std::sort(sorted_values.begin(), sorted_values.end());
            for (std::size_t i = 0; i < n; ++i)
                if (present[i] &&
                    std::binary_search(sorted_values.begin(), sorted_values.end(), column[i]))
                    out.set(i);
        }
    } else {
        for (std::size_t i = 0; i < n; ++i)
            if (present[i] && in_range<Key>(column[i], s)) out.set(i);
    }
}

}  // namespace

SlotSet AttributeStore::leaf(const FilterStep& step, std::size_t slots) const {
    const Field* f = find(step.field);
    if (f == nullptr) {
        std::string known;
        for (const auto& g : fields_) known += (known.empty() ? "" : ", ") + g->name;
        throw std::invalid_argument("unknown attribute '" + step.field + "'" +
                                    (known.empty() ? "; the index has no attributes"
                                                   : "; the index has: " + known));
    }
    SlotSet out(slots);
    if (f->type == AttrType::Int) {
        if (step.op == FilterStep::Op::In && !step.floats.empty())
            throw std::invalid_argument("attribute '" + f->name +
                                        "' holds integers; compare it with integers");
        eval_leaf<std::int64_t>(f->ints, f->present, f->sorted_ints, f->scans, cache_mutex_, step,
                                step.ints, out);
    } else {
        std::vector<double> values(step.floats);
        for (const std::int64_t v : step.ints) values.push_back(static_cast<double>(v));
        eval_leaf<double>(f->floats, f->present, f->sorted_floats, f->scans, cache_mutex_, step,
                          values, out);
    }
    return out;
}

SlotSet AttributeStore::evaluate(const FilterProgram& program, std::size_t slots) const {
    std::shared_lock<RwLock> lock(lock_);
    std::vector<SlotSet> stack;
    for (const FilterStep& step : program) {
        switch (step.op) {
            case FilterStep::Op::In:
            case FilterStep::Op::Range:
                stack.push_back(leaf(step, slots));
                break;
            case FilterStep::Op::And:
            case FilterStep::Op::Or: {
                if (stack.size() < 2) throw std::invalid_argument("malformed filter program");
                SlotSet b = std::move(stack.back());
                stack.pop_back();
                if (step.op == FilterStep::Op::And)
                    stack.back().intersect(b);
                else
                    stack.back().unite(b);
                break;
            }
            case FilterStep::Op::Not:
                if (stack.empty()) throw std::invalid_argument("malformed filter program");
                stack.back().complement();
                break;
            default:
                throw std::invalid_argument("malformed filter program");
        }
    }
    if (stack.size() != 1) throw std::invalid_argument("malformed filter program");
    return std::move(stack.back());
}

AttrType AttributeStore::values(const std::string& field, const node_id* slots, std::size_t n,
                                void* out, std::uint8_t* is_set) const {
    std::shared_lock<RwLock> lock(lock_);
    const Field* f = find(field);
    if (f == nullptr) throw std::invalid_argument("unknown attribute '" + field + "'");
    for (std::size_t i = 0; i < n; ++i) {
        const node_id s = slots[i];
        const bool has = s < f->present.size() && f->present[s];
        is_set[i] = has ? 1 : 0;
        if (f->type == AttrType::Int)
            static_cast<std::int64_t*>(out)[i] = has ? f->ints[s] : 0;
        else
            static_cast<double*>(out)[i] = has ? f->floats[s] : 0.0;
    }
    return f->type;
}

// Section layout (little-endian, 8-byte units): field count, slot count; then per
// field: type, name length, the name padded to 8, slots x 8 value bytes, and the
// presence bitmap (slots rounded up to 64 bits). Missing values are stored as 0.
std::string AttributeStore::serialize(std::size_t slots) const {
    std::shared_lock<RwLock> lock(lock_);
    std::string out;
    auto put = [&](const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); };
    auto put64 = [&](std::uint64_t v) { put(&v, 8); };
    put64(fields_.size());
    put64(slots);
    for (const auto& f : fields_) {
        put64(static_cast<std::uint64_t>(f->type));
        put64(f->name.size());
        std::string name = f->name;
        name.resize((name.size() + 7) / 8 * 8, '\0');
        put(name.data(), name.size());
        std::vector<std::uint64_t> bits((slots + 63) / 64, 0);
        for (std::size_t i = 0; i < slots; ++i) {
            const bool has = i < f->present.size() && f->present[i];
            std::uint64_t raw = 0;
            if (has) {
                if (f->type == AttrType::Int)
                    std::memcpy(&raw, &f->ints[i], 8);
                else
                    std::memcpy(&raw, &f->floats[i], 8);
                bits[i / 64] |= std::uint64_t{1} << (i % 64);
            }
            put64(raw);
        }
        put(bits.data(), bits.size() * 8);
    }
    return out;
}

void AttributeStore::deserialize(const char* data, std::size_t bytes, std::size_t slots,
                                 const label_t* labels_of_slots) {
    std::size_t at = 0;
    auto take = [&](std::size_t n) {
        if (n > bytes - at) corrupt("the attribute section is truncated");
        const char* p = data + at;
        at += n;
        return p;
    };
    auto take64 = [&] {
        std::uint64_t v;
        std::memcpy(&v, take(8), 8);
        return v;
    };
    const std::uint64_t nfields = take64();
    if (nfields > kMaxAttrFields) corrupt("too many attribute fields");
    if (take64() != slots) corrupt("the attribute section's element count does not match");
    std::vector<std::unique_ptr<Field>> fields;
    for (std::uint64_t k = 0; k < nfields; ++k) {
        auto f = std::make_unique<Field>();
        const std::uint64_t type = take64();
        if (type > 1) corrupt("unknown attribute type");
        f->type = static_cast<AttrType>(type);
        const std::uint64_t len = take64();
        if (len == 0 || len > kMaxAttrNameBytes) corrupt("bad attribute name length");
        const char* name = take((len + 7) / 8 * 8);
        f->name.assign(name, len);
        if (!valid_name(f->name)) corrupt("bad attribute name");
        for (std::size_t p = len; p < (len + 7) / 8 * 8; ++p)
            if (name[p] != 0) corrupt("bad attribute name padding");
        for (const auto& g : fields)
            if (g->name == f->name) corrupt("attribute '" + f->name + "' appears twice");
        if (slots > (bytes - at) / 8) corrupt("the attribute section is truncated");
        const char* values = take(slots * 8);
        const char* bits = take((slots + 63) / 64 * 8);
        f->resize(slots);
        for (std::size_t i = 0; i < slots; ++i) {
            std::uint64_t raw;
            std::memcpy(&raw, values + i * 8, 8);
            const bool has = (static_cast<unsigned char>(bits[i / 8]) >> (i % 8)) & 1u;
            if (!has) {
                if (raw != 0) corrupt("a missing attribute value is not zero");
                continue;
            }
            f->present[i] = 1;
            if (f->type == AttrType::Int) {
                std::memcpy(&f->ints[i], &raw, 8);
            } else {
                std::memcpy(&f->floats[i], &raw, 8);
                if (!std::isfinite(f->floats[i])) corrupt("a non-finite attribute value");
            }
        }
        for (std::size_t i = slots; i < (slots + 63) / 64 * 64; ++i)
            if ((static_cast<unsigned char>(bits[i / 8]) >> (i % 8)) & 1u)
                corrupt("attribute presence bits past the elements");
        fields.push_back(std::move(f));
    }
    if (at != bytes) corrupt("trailing bytes in the attribute section");
    std::unique_lock<RwLock> lock(lock_);
    fields_ = std::move(fields);
    owner_.assign(labels_of_slots, labels_of_slots + slots);
}

}  // namespace evidex
