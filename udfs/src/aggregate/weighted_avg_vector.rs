//! `weighted_avg_vector(vector, weight)`: the element-wise weighted mean of vectors, e.g. a
//! user's taste vector from the songs they played. Defines `state_fields` and `merge_batch`
//! (weighted sum + total weight), so it runs in partial/final plans and on Ballista. Under
//! GROUP BY it uses a native groups accumulator (one flat array of sums for all groups), whose
//! memory the pool sees exactly: the generic per-group adapter held several times more than it
//! reported (pipeline B's taste step: 740 MiB real for 200 MiB accounted).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, ListArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::utils::take_function_args;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion_macros::user_doc;

use crate::util::{as_f64, as_list, coerce_float, coerce_vector, float_list, vector};

#[user_doc(
    doc_section(label = "StreamPulse Functions"),
    description = "Element-wise weighted average of vectors: sum(weight * vector) / sum(weight). \
Rows with a NULL vector or a NULL or zero weight are skipped; NULL when no row has weight. \
Negative weights, vectors of different lengths (within a group, and under GROUP BY across \
groups) and vectors with NULL elements are errors.",
    syntax_example = "weighted_avg_vector(vector, weight)",
    sql_example = r#"```sql
> SELECT weighted_avg_vector(v, w) FROM (VALUES ([1.0, 0.0], 1.0), ([0.0, 1.0], 3.0)) AS t(v, w);
[0.25, 0.75]
```"#,
    argument(name = "vector", description = "Array of numbers."),
    argument(name = "weight", description = "Non-negative number.")
)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WeightedAvgVector {
    signature: Signature,
}

impl Default for WeightedAvgVector {
    fn default() -> Self {
        Self { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

impl AggregateUDFImpl for WeightedAvgVector {
    fn name(&self) -> &str {
        "weighted_avg_vector"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [v, w] = take_function_args(self.name(), arg_types)?;
        Ok(vec![coerce_vector(self.name(), 1, v)?, coerce_float(self.name(), "weight", w)?])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(float_list())
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(WeightedAvgAccumulator::default()))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::<WeightedAvgGroups>::default())
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(format!("{}[weighted_sum]", args.name), float_list(), true)),
            Arc::new(Field::new(format!("{}[weight]", args.name), DataType::Float64, true)),
        ])
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.doc()
    }
}

/// Weighted sum of vectors and the sum of weights.
#[derive(Debug, Default)]
pub struct WeightedAvgAccumulator {
    sum: Option<Vec<f64>>,
    weight: f64,
}

impl WeightedAvgAccumulator {
    fn add(&mut self, v: &[f64], w: f64) -> Result<()> {
        match &mut self.sum {
            None => self.sum = Some(v.iter().map(|x| x * w).collect()),
            Some(sum) if sum.len() != v.len() => {
                return exec_err!(
                    "weighted_avg_vector: vectors of different lengths ({} and {}) in one group",
                    sum.len(),
                    v.len()
                );
            }
            Some(sum) => sum.iter_mut().zip(v).for_each(|(s, x)| *s += x * w),
        }
        self.weight += w;
        Ok(())
    }
}

impl Accumulator for WeightedAvgAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for_each_weighted(values, None, |_, v, w| self.add(v, w))
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [sums, weights] = take_function_args("weighted_avg_vector", states)?;
        let (sums, weights) = (as_list("weighted_avg_vector", sums)?, as_f64("weighted_avg_vector", weights)?);
        for row in 0..sums.len() {
            if let Some(sum) = vector("weighted_avg_vector", sums, row)? {
                let w = if weights.is_null(row) { 0.0 } else { weights.value(row) };
                // `sum` is already weighted: add it as is.
                let weight_before = self.weight;
                self.add(sum, 1.0)?;
                self.weight = weight_before + w;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let sum = match &self.sum {
            Some(s) => ScalarValue::List(ScalarValue::new_list_nullable(
                &s.iter().map(|x| ScalarValue::Float64(Some(*x))).collect::<Vec<_>>(),
                &DataType::Float64,
            )),
            None => ScalarValue::try_from(float_list())?,
        };
        Ok(vec![sum, ScalarValue::Float64(Some(self.weight))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        match &self.sum {
            Some(s) if self.weight > 0.0 => Ok(ScalarValue::List(ScalarValue::new_list_nullable(
                &s.iter().map(|x| ScalarValue::Float64(Some(x / self.weight))).collect::<Vec<_>>(),
                &DataType::Float64,
            ))),
            _ => ScalarValue::try_from(float_list()),
        }
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.sum.as_ref().map_or(0, |s| s.capacity() * size_of::<f64>())
    }
}

/// Weighted sums of all groups in one flat array (`dim` values per group, once the first vector
/// fixes `dim`), their weights, and whether each group has seen a vector.
#[derive(Debug, Default)]
struct WeightedAvgGroups {
    dim: Option<usize>,
    sums: Vec<f64>,
    weights: Vec<f64>,
    seen: Vec<bool>,
}

impl WeightedAvgGroups {
    fn resize(&mut self, groups: usize) {
        self.weights.resize(groups, 0.0);
        self.seen.resize(groups, false);
        if let Some(d) = self.dim {
            self.sums.resize(groups * d, 0.0);
        }
    }

    /// Adds `w * v` to `group`'s sum and `weight` to its total weight.
    fn add(&mut self, group: usize, v: &[f64], w: f64, weight: f64) -> Result<()> {
        let d = match self.dim {
            Some(d) => d,
            None => {
                self.dim = Some(v.len());
                self.sums.resize(self.weights.len() * v.len(), 0.0);
                v.len()
            }
        };
        if v.len() != d {
            return exec_err!("weighted_avg_vector: vectors of different lengths ({d} and {})", v.len());
        }
        self.sums[group * d..(group + 1) * d].iter_mut().zip(v).for_each(|(s, x)| *s += x * w);
        self.weights[group] += weight;
        self.seen[group] = true;
        Ok(())
    }

    /// Takes the emitted groups' state: sums, weights, seen.
    fn take(&mut self, emit_to: EmitTo) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
        let d = self.dim.unwrap_or(0);
        let sums = match emit_to {
            EmitTo::All => std::mem::take(&mut self.sums),
            EmitTo::First(n) => self.sums.drain(..(n * d).min(self.sums.len())).collect(),
        };
        (sums, emit_to.take_needed(&mut self.weights), emit_to.take_needed(&mut self.seen))
    }

    /// A `List<Float64>` with group i's `sums` divided by `divisors[i]`, NULL where `valid[i]` is false.
    fn lists(&self, sums: &[f64], divisors: &[f64], valid: &[bool]) -> ArrayRef {
        let d = self.dim.unwrap_or(0);
        let mut values = Vec::with_capacity(sums.len());
        for (i, ok) in valid.iter().enumerate() {
            if *ok {
                values.extend(sums[i * d..(i + 1) * d].iter().map(|s| s / divisors[i]));
            }
        }
        let lengths = valid.iter().map(|ok| if *ok { d } else { 0 });
        let DataType::List(field) = float_list() else { unreachable!("float_list is a list") };
        Arc::new(ListArray::new(
            field,
            OffsetBuffer::from_lengths(lengths),
            Arc::new(Float64Array::from(values)),
            Some(NullBuffer::from(valid.to_vec())),
        ))
    }
}

/// Calls `f(row, vector, weight)` for each input row with a vector and a positive weight; rows
/// filtered out, NULL vectors and NULL or zero weights are skipped, negative weights are errors.
fn for_each_weighted(
    values: &[ArrayRef],
    filter: Option<&BooleanArray>,
    mut f: impl FnMut(usize, &[f64], f64) -> Result<()>,
) -> Result<()> {
    let [vectors, weights] = take_function_args("weighted_avg_vector", values)?;
    let (vectors, weights) = (as_list("weighted_avg_vector", vectors)?, as_f64("weighted_avg_vector", weights)?);
    for row in 0..vectors.len() {
        if filter.is_some_and(|f| !(f.is_valid(row) && f.value(row))) || weights.is_null(row) {
            continue;
        }
        let w = weights.value(row);
        if w < 0.0 || w.is_nan() {
            return exec_err!("weighted_avg_vector: weight must be non-negative, got {w}");
        }
        if w == 0.0 {
            continue;
        }
        if let Some(v) = vector("weighted_avg_vector", vectors, row)? {
            f(row, v, w)?;
        }
    }
    Ok(())
}

impl GroupsAccumulator for WeightedAvgGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        for_each_weighted(values, opt_filter, |row, v, w| self.add(group_indices[row], v, w, w))
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        let [sums, weights] = take_function_args("weighted_avg_vector", values)?;
        let (sums, weights) = (as_list("weighted_avg_vector", sums)?, as_f64("weighted_avg_vector", weights)?);
        self.resize(total_num_groups);
        for (row, group) in group_indices.iter().enumerate() {
            if let Some(sum) = vector("weighted_avg_vector", sums, row)? {
                // `sum` is already weighted: add it as is, with its weight.
                let w = if weights.is_null(row) { 0.0 } else { weights.value(row) };
                self.add(*group, sum, 1.0, w)?;
            }
        }
        Ok(())
    }

    /// Each row as its own group (DataFusion skips partial aggregation when it barely reduces).
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let rows = values.first().map_or(0, |v| v.len());
        let mut each = WeightedAvgGroups::default();
        each.update_batch(values, &(0..rows).collect::<Vec<_>>(), opt_filter, rows)?;
        each.state(EmitTo::All)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (sums, weights, seen) = self.take(emit_to);
        let valid: Vec<bool> = seen.iter().zip(&weights).map(|(s, w)| *s && *w > 0.0).collect();
        Ok(self.lists(&sums, &weights, &valid))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (sums, weights, seen) = self.take(emit_to);
        let ones = vec![1.0; seen.len()];
        Ok(vec![self.lists(&sums, &ones, &seen), Arc::new(Float64Array::from(weights))])
    }

    fn size(&self) -> usize {
        size_of_val(self) + (self.sums.capacity() + self.weights.capacity()) * size_of::<f64>() + self.seen.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_partial_states_equals_one_pass() {
        let mut whole = WeightedAvgAccumulator::default();
        whole.add(&[1.0, 0.0], 1.0).unwrap();
        whole.add(&[0.0, 1.0], 3.0).unwrap();
        let mut a = WeightedAvgAccumulator::default();
        a.add(&[1.0, 0.0], 1.0).unwrap();
        let mut b = WeightedAvgAccumulator::default();
        b.add(&[0.0, 1.0], 3.0).unwrap();
        let state_b: Vec<ArrayRef> = b.state().unwrap().iter().map(|s| s.to_array().unwrap()).collect();
        a.merge_batch(&state_b).unwrap();
        assert_eq!(a.evaluate().unwrap(), whole.evaluate().unwrap());
        assert_eq!(a.weight, 4.0);
        let mut empty = WeightedAvgAccumulator::default();
        assert!(empty.evaluate().unwrap().is_null());
        let err = whole.add(&[1.0], 1.0).unwrap_err().to_string();
        assert!(err.contains("different lengths (2 and 1)"), "{err}");
    }

    fn list(rows: &[Option<Vec<f64>>]) -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<datafusion::arrow::datatypes::Float64Type, _, _>(
            rows.iter().map(|r| r.as_ref().map(|v| v.iter().map(|x| Some(*x)).collect::<Vec<_>>())),
        ))
    }

    #[test]
    fn groups_accumulator_matches_the_row_accumulator() {
        // Groups 0..3: group 2 gets only a zero weight and a NULL vector; rows split over two
        // partial accumulators, merged, emitted in two steps (First(1), then All).
        let rows: Vec<(usize, Option<Vec<f64>>, Option<f64>)> = vec![
            (0, Some(vec![1.0, 0.0]), Some(1.0)),
            (1, Some(vec![2.0, 2.0]), Some(2.0)),
            (2, Some(vec![5.0, 5.0]), Some(0.0)),
            (0, Some(vec![0.0, 1.0]), Some(3.0)),
            (2, None, Some(1.0)),
            (1, Some(vec![4.0, 0.0]), None),
            (1, Some(vec![0.0, 4.0]), Some(2.0)),
        ];
        let mut expected = Vec::new();
        for g in 0..3 {
            let mut acc = WeightedAvgAccumulator::default();
            let mine: Vec<_> = rows.iter().filter(|r| r.0 == g).collect();
            let v = list(&mine.iter().map(|r| r.1.clone()).collect::<Vec<_>>());
            let w: ArrayRef = Arc::new(Float64Array::from(mine.iter().map(|r| r.2).collect::<Vec<_>>()));
            acc.update_batch(&[v, w]).unwrap();
            expected.push(acc.evaluate().unwrap());
        }
        let mut partials = Vec::new();
        for half in [&rows[..4], &rows[4..]] {
            let mut acc = WeightedAvgGroups::default();
            let v = list(&half.iter().map(|r| r.1.clone()).collect::<Vec<_>>());
            let w: ArrayRef = Arc::new(Float64Array::from(half.iter().map(|r| r.2).collect::<Vec<_>>()));
            let groups: Vec<usize> = half.iter().map(|r| r.0).collect();
            acc.update_batch(&[v, w], &groups, None, 3).unwrap();
            partials.push(acc.state(EmitTo::All).unwrap());
        }
        let mut fin = WeightedAvgGroups::default();
        for state in &partials {
            fin.merge_batch(state, &[0, 1, 2], 3).unwrap();
        }
        let first = fin.evaluate(EmitTo::First(1)).unwrap();
        let rest = fin.evaluate(EmitTo::All).unwrap();
        let got: Vec<ScalarValue> = (0..1)
            .map(|i| ScalarValue::try_from_array(&first, i).unwrap())
            .chain((0..2).map(|i| ScalarValue::try_from_array(&rest, i).unwrap()))
            .collect();
        assert_eq!(got, expected);
        assert!(got[2].is_null(), "a group with no weighted vector is NULL");
        let mut bad = WeightedAvgGroups::default();
        let err = bad
            .update_batch(
                &[list(&[Some(vec![1.0, 2.0]), Some(vec![1.0])]), Arc::new(Float64Array::from(vec![1.0, 1.0]))],
                &[0, 1],
                None,
                2,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("different lengths (2 and 1)"), "{err}");
    }
}
