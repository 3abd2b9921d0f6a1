//! Windows.

#[cfg(test)]
mod tests {
    #[test]
    fn runs() {
        assert_eq!(std::env::consts::OS, "windows");
    }
}
