//! Server-side printing: turns objects into the `meta.k8s.io/v1` Table kubectl prints,
//! using the built-in printers or a CRD's additionalPrinterColumns.

use crate::body::partial_metadata;
use crate::registry::Resource;
use corral_apimachinery::printers;
use serde_json::Value;

pub fn render(
    res: &Resource,
    items: &[Value],
    rv: &str,
    cont: Option<&str>,
    full_object: bool,
) -> Value {
    let now = chrono::Utc::now();
    let (columns, cells): (Vec<printers::Column>, Vec<Vec<Value>>) = match &res.crd {
        Some(crd) => (
            printers::crd_columns(&crd.printer_columns),
            items
                .iter()
                .map(|o| printers::crd_row_cells(&crd.printer_columns, o, now))
                .collect(),
        ),
        None => (
            printers::columns_for(&res.group, &res.kind),
            items
                .iter()
                .map(|o| printers::row_cells(&res.group, &res.kind, o, now))
                .collect(),
        ),
    };
    let rows = cells
        .into_iter()
        .zip(items.iter())
        .map(|(c, o)| {
            let obj = if full_object {
                o.clone()
            } else {
                partial_metadata(o)
            };
            (c, obj)
        })
        .collect();
    printers::table(&columns, rows, rv, cont)
}
