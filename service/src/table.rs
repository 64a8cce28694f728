//! Tables as Nodepool prints them (PrettyTable's borders), or as JSON / YAML records: what the
//! `nodepool` command and the operator's Nodepool-style web endpoints print.

use anyhow::Result;
use serde::Serialize;

/// How a table is written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Rows under headers, printed as a bordered table, or as JSON / YAML objects keyed by header.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self, output: Output) -> Result<String> {
        match output {
            Output::Table => Ok(self.bordered()),
            Output::Json => Ok(serde_json::to_string_pretty(&self.records())? + "\n"),
            Output::Yaml => Ok(serde_yaml_ng::to_string(&self.records())?),
        }
    }

    /// Only the columns whose JSON keys are in `fields` (Nodepool's `fields=` query), in that
    /// order; unknown names are ignored.
    pub fn select(&self, fields: &[&str]) -> Table {
        let chosen: Vec<usize> = fields
            .iter()
            .filter_map(|field| self.headers.iter().position(|header| key(header) == *field))
            .collect();
        Table {
            headers: chosen.iter().map(|&i| self.headers[i]).collect(),
            rows: self.rows.iter().map(|row| chosen.iter().map(|&i| row[i].clone()).collect()).collect(),
        }
    }

    /// Only the rows whose column `field` (a JSON key) is `value`.
    pub fn filter(mut self, field: &str, value: &str) -> Table {
        if let Some(column) = self.headers.iter().position(|header| key(header) == field) {
            self.rows.retain(|row| row[column] == value);
        }
        self
    }

    /// The rows as objects keyed by each column's JSON key.
    pub fn records(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.rows
            .iter()
            .map(|row| {
                self.headers
                    .iter()
                    .zip(row)
                    .map(|(header, cell)| (key(header), serde_json::Value::String(cell.clone())))
                    .collect()
            })
            .collect()
    }

    fn bordered(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let rule = widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+");
        let rule = format!("+{rule}+\n");
        let line = |cells: Vec<&str>| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!(" {c}{} ", " ".repeat(w - c.chars().count())))
                .collect();
            format!("|{}|\n", cells.join("|"))
        };
        let mut out = rule.clone();
        out.push_str(&line(self.headers.clone()));
        out.push_str(&rule);
        for row in &self.rows {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out.push_str(&rule);
        out
    }
}

/// A header as a JSON key, as Nodepool's web API names them (`Server ID` → `server_id`).
fn key(header: &str) -> String {
    header.to_ascii_lowercase().replace([' ', '-'], "_")
}

/// Prints any serializable value as JSON or YAML (the table form is the caller's).
pub fn document<T: Serialize>(value: &T, output: Output) -> Result<String> {
    match output {
        Output::Yaml => Ok(serde_yaml_ng::to_string(value)?),
        _ => Ok(serde_json::to_string_pretty(value)? + "\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_nodepools_borders_and_json_keys() {
        let mut table = Table::new(&["ID", "Server ID"]);
        table.row(vec!["0000000001".into(), "i-1".into()]);
        assert_eq!(
            table.render(Output::Table).unwrap(),
            "+------------+-----------+\n| ID         | Server ID |\n+------------+-----------+\n| 0000000001 | i-1       |\n+------------+-----------+\n"
        );
        let json: serde_json::Value = serde_json::from_str(&table.render(Output::Json).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!([{"id": "0000000001", "server_id": "i-1"}]));
    }
}
