//! MergeOp and DiffOp: both only rearrange layers, nothing is copied.

use kiln_proto::buildkit::pb;

use crate::cache::Snapshot;

#[derive(Debug, thiserror::Error)]
pub(crate) enum LayerOpError {
    #[error("merge input {0} is not an input of the op")]
    MergeInput(i64),
    #[error("diff input {0} is not an input of the op")]
    DiffInput(i64),
    #[error("diff of states that do not share their lower layers is not supported yet")]
    UnrelatedDiff,
}

fn input(inputs: &[Snapshot], index: i64, err: fn(i64) -> LayerOpError) -> Result<&Snapshot, LayerOpError> {
    usize::try_from(index).ok().and_then(|i| inputs.get(i)).ok_or(err(index))
}

/// The inputs stacked in order: later inputs over earlier ones.
pub(crate) fn merge(op: &pb::MergeOp, inputs: &[Snapshot]) -> Result<Snapshot, LayerOpError> {
    let mut layers = Vec::new();
    for m in &op.inputs {
        layers.extend(input(inputs, m.input, LayerOpError::MergeInput)?.layers.iter().cloned());
    }
    Ok(Snapshot { layers })
}

/// The changes from `lower` to `upper`: the layers `upper` has on top of `lower`.
/// A missing side (index -1) is scratch.
pub(crate) fn diff(op: &pb::DiffOp, inputs: &[Snapshot]) -> Result<Snapshot, LayerOpError> {
    let side = |i: Option<i64>| match i {
        None | Some(-1) => Ok(Snapshot::default()),
        Some(i) => input(inputs, i, LayerOpError::DiffInput).cloned(),
    };
    let lower = side(op.lower.as_ref().map(|l| l.input))?;
    let upper = side(op.upper.as_ref().map(|u| u.input))?;
    match upper.layers.strip_prefix(lower.layers.as_slice()) {
        Some(rest) => Ok(Snapshot { layers: rest.to_vec() }),
        None => Err(LayerOpError::UnrelatedDiff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(layers: &[&str]) -> Snapshot {
        Snapshot { layers: layers.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn merge_stacks_inputs_in_order() {
        let op = pb::MergeOp { inputs: vec![pb::MergeInput { input: 1 }, pb::MergeInput { input: 0 }] };
        assert_eq!(merge(&op, &[snap(&["a"]), snap(&["b", "c"])]).unwrap(), snap(&["b", "c", "a"]));
        let bad = pb::MergeOp { inputs: vec![pb::MergeInput { input: 2 }] };
        assert!(matches!(merge(&bad, &[snap(&["a"])]), Err(LayerOpError::MergeInput(2))));
    }

    #[test]
    fn diff_keeps_what_upper_adds_over_lower() {
        let op = pb::DiffOp {
            lower: Some(pb::LowerDiffInput { input: 0 }),
            upper: Some(pb::UpperDiffInput { input: 1 }),
        };
        assert_eq!(diff(&op, &[snap(&["a"]), snap(&["a", "b", "c"])]).unwrap(), snap(&["b", "c"]));
        assert!(matches!(diff(&op, &[snap(&["x"]), snap(&["a", "b"])]), Err(LayerOpError::UnrelatedDiff)));
        let from_scratch = pb::DiffOp { lower: Some(pb::LowerDiffInput { input: -1 }), upper: op.upper };
        assert_eq!(diff(&from_scratch, &[snap(&["a"]), snap(&["a", "b"])]).unwrap(), snap(&["a", "b"]));
    }
}
