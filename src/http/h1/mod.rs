pub mod chunked;
pub mod request;
pub mod response;
