//! Python values to JSON values, for `Net(config={...})` (the node's settings deserialise
//! from JSON, which names a bad field in its error).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// A `dict` with `str` keys as a JSON object.
pub(crate) fn dict_to_map(dict: &Bound<'_, PyDict>) -> PyResult<Map<String, Value>> {
    let mut map = Map::new();
    for (key, value) in dict.iter() {
        let key: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("config= keys must be str, not {key:?}")))?;
        let value = to_json(&key, &value)?;
        map.insert(key, value);
    }
    Ok(map)
}

/// `None`, `bool`, `int`, `float`, `str`, `list`/`tuple` and `dict` as JSON; anything else is
/// a `TypeError` naming the setting.
fn to_json(key: &str, value: &Bound<'_, PyAny>) -> PyResult<Value> {
    if value.is_none() {
        Ok(Value::Null)
    } else if value.is_instance_of::<PyBool>() {
        Ok(Value::Bool(value.extract()?))
    } else if value.is_instance_of::<PyInt>() {
        if let Ok(n) = value.extract::<u64>() {
            Ok(Value::from(n))
        } else {
            Ok(Value::from(value.extract::<i64>()?))
        }
    } else if value.is_instance_of::<PyFloat>() {
        let f: f64 = value.extract()?;
        Number::from_f64(f).map(Value::Number).ok_or_else(|| {
            PyTypeError::new_err(format!("config={{{key:?}: {f}}}: not a finite number"))
        })
    } else if value.is_instance_of::<PyString>() {
        Ok(Value::String(value.extract()?))
    } else if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        value
            .try_iter()?
            .map(|item| to_json(key, &item?))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array)
    } else if let Ok(dict) = value.cast::<PyDict>() {
        dict_to_map(dict).map(Value::Object)
    } else {
        Err(PyTypeError::new_err(format!(
            "config={{{key:?}: ...}}: cannot use a {} value",
            value.get_type().name()?
        )))
    }
}
