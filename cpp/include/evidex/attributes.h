// Attributes stored with the elements (named int64 or float64 fields, at most
// one value per element) and filter programs over them, evaluated into a set of
// slots before a search starts, so the planner knows the allowed count.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "evidex/rwlock.h"

namespace evidex {

using node_id = std::uint32_t;  // internal slot number (as in hnsw.h)
using label_t = std::uint64_t;

// A set of slots [0, size) as a bitset.
class SlotSet {
public:
    explicit SlotSet(std::size_t size = 0) : size_(size), words_((size + 63) / 64, 0) {}
    std::size_t size() const { return size_; }
    const std::uint64_t* words() const { return words_.data(); }  // bit i of word i / 64
    void set(std::size_t i) { words_[i >> 6] |= std::uint64_t{1} << (i & 63); }
    void reset(std::size_t i) { words_[i >> 6] &= ~(std::uint64_t{1} << (i & 63)); }
    bool test(std::size_t i) const {
        return i < size_ && ((words_[i >> 6] >> (i & 63)) & 1u);
    }
    std::size_t count() const;
    void intersect(const SlotSet& o);
    void unite(const SlotSet& o);  // within [0, size), whatever o's size
    void complement();              // within [0, size)
    // Calls fn(slot) for every member, in increasing order.
    template <class Fn>
    void for_each(Fn&& fn) const {
        for (std::size_t w = 0; w < words_.size(); ++w)
            for (std::uint64_t bits = words_[w]; bits != 0; bits &= bits - 1)
                fn(static_cast<node_id>(w * 64 + static_cast<std::size_t>(__builtin_ctzll(bits))));
    }

private:
    void clear_tail();  // the bits past size_ in the last word
    std::size_t size_;
    std::vector<std::uint64_t> words_;
};

enum class AttrType : std::uint32_t { Int = 0, Float = 1 };

// One field's values for a batch of elements (the `attributes=` of an add).
struct AttrColumn {
    std::string name;
    AttrType type = AttrType::Int;
    std::vector<std::int64_t> ints;   // type Int
    std::vector<double> floats;       // type Float (finite)
};

// One step of a filter program in postfix order. Leaves push a set, And/Or pop
// two and push one, Not complements the top.
struct FilterStep {
    enum class Op : std::uint32_t { In = 0, Range = 1, And = 2, Or = 3, Not = 4 };
    Op op = Op::In;
    std::string field;
    std::vector<std::int64_t> ints;  // In, on an int field
    std::vector<double> floats;      // In, on a float field
    // Range, inclusive bounds: int fields use ilo/ihi; float fields lo/hi, each
    // bound open (exclusive) when its flag says so.
    std::int64_t ilo = 0, ihi = 0;
    double lo = 0, hi = 0;
    bool lo_open = false, hi_open = false;
};
using FilterProgram = std::vector<FilterStep>;

constexpr std::size_t kMaxAttrFields = 64;
constexpr std::size_t kMaxAttrNameBytes = 64;

// The attribute columns of an index, one value slot per element slot. A value
// belongs to the element whose label `owner` records: a slot reused for another
// element starts with no values. Thread-safe; its lock is a leaf (nothing else is
// taken while it is held).
class AttributeStore {
public:
    AttributeStore();
    ~AttributeStore();
    AttributeStore(const AttributeStore&) = delete;
    AttributeStore& operator=(const AttributeStore&) = delete;
    struct FieldInfo {
        std::string name;
        AttrType type;
    };
    std::vector<FieldInfo> fields() const;
    bool empty() const;
    std::size_t memory_bytes() const;  // columns, owners and the sorted views

    // Checks a batch before anything changes and declares its new fields (so
    // concurrent batches agree on each field's type). Throws std::invalid_argument
    // for a bad or repeated name, a type other than the field's, a non-finite
    // float, too many fields, or a length other than n.
    void prepare(const std::vector<AttrColumn>& columns, std::size_t n);
    // Record values of a prepared batch: element i, the batch's row rows[i], now
    // lives in slots[i] with labels[i]; slots whose owner changed lose their old
    // values.
    void assign(const std::vector<AttrColumn>& columns, const std::size_t* rows,
                const node_id* slots, const label_t* labels, std::size_t n);

    // A slot now holds another element (a deleted one's slot reused): its values
    // go, before the new element is visible under its label.
    void reassign_slot(node_id slot, label_t owner);

    // Members among the first `slots` slots (with a value: a missing value never
    // matches a comparison, and Not complements within the slots).
    SlotSet evaluate(const FilterProgram& program, std::size_t slots) const;

    // Values of `field` at `slots` (is_set[i] = 0 where missing); out is int64 or
    // double by the field's type, written as 8 bytes per slot.
    AttrType values(const std::string& field, const node_id* slots, std::size_t n, void* out,
                    std::uint8_t* is_set) const;

    // Persistence: the attribute section of the file format (serialize.cpp).
    std::string serialize(std::size_t slots) const;
    // Validates a section (throws CorruptIndexError) and replaces the contents.
    void deserialize(const char* data, std::size_t bytes, std::size_t slots,
                     const label_t* labels_of_slots);

private:
    struct Field;
    Field* find(const std::string& name);
    const Field* find(const std::string& name) const;
    SlotSet leaf(const FilterStep& step, std::size_t slots) const;
    void grow(std::size_t slots);

    std::vector<std::unique_ptr<Field>> fields_;
    std::vector<label_t> owner_;  // per slot: the element its values belong to
    mutable RwLock lock_;
    mutable std::mutex cache_mutex_;  // the fields' sorted views (below lock_ shared)
};

}  // namespace evidex
