//! Product rules: which product a contact's `tags` name.

use crate::config::ProductRule;

/// The product when no rule matches (or `tags` is NULL).
pub const DEFAULT_PRODUCT: &str = "DEFAULT";

/// Ordered substring rules; the first rule whose needle occurs in `tags` names the product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRules {
    rules: Vec<ProductRule>,
    case_insensitive: bool,
}

impl ProductRules {
    /// Rules matched in order. With `case_insensitive`, needles and tags are compared in
    /// lowercase.
    pub fn new(rules: &[ProductRule], case_insensitive: bool) -> ProductRules {
        let rules = rules
            .iter()
            .map(|r| ProductRule {
                needle: if case_insensitive {
                    r.needle.to_lowercase()
                } else {
                    r.needle.clone()
                },
                product: r.product.clone(),
            })
            .collect();
        ProductRules {
            rules,
            case_insensitive,
        }
    }

    /// The guide's rules: `solar`→`SOLAR`, `hvac`→`HVAC`, `roofing`→`ROOFING`, case-sensitive.
    pub fn guide_default() -> ProductRules {
        let settings = crate::config::TransformSettings::default();
        ProductRules::new(&settings.product_rules, settings.case_insensitive)
    }

    /// The rules in order (needles lowercased when case-insensitive).
    pub fn rules(&self) -> &[ProductRule] {
        &self.rules
    }

    /// Whether needles match regardless of case.
    pub fn case_insensitive(&self) -> bool {
        self.case_insensitive
    }

    /// The product for a contact's `tags`.
    pub fn product_for(&self, tags: Option<&str>) -> &str {
        let Some(tags) = tags else {
            return DEFAULT_PRODUCT;
        };
        let lowered;
        let haystack = if self.case_insensitive {
            lowered = tags.to_lowercase();
            lowered.as_str()
        } else {
            tags
        };
        self.rules
            .iter()
            .find(|rule| haystack.contains(rule.needle.as_str()))
            .map_or(DEFAULT_PRODUCT, |rule| rule.product.as_str())
    }
}
